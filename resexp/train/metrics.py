"""Running sums of loss and top-k hits, kept on the device: the training step never waits for
the host. They are read (one synchronisation) when the epoch ends, summed over DDP ranks."""

from __future__ import annotations

import torch

from resexp.train.environment import all_reduce_sum


class Accumulator:
    # sums: loss * n, top-1 hits, top-5 hits, n
    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == target[:, None]
        batch = torch.stack([
            loss.detach().double() * n,
            hits[:, 0].sum().double(),
            hits.any(dim=1).sum().double(),
            # a fill, not torch.tensor(n, device=...): that is a blocking host-to-device copy,
            # i.e. a stream synchronisation in every step on CUDA
            torch.full((), float(n), dtype=torch.float64, device=loss.device),
        ])
        self.sums += batch

    def compute(self) -> dict[str, float]:
        loss, top1, top5, n = all_reduce_sum(self.sums.clone()).tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "acc": top1 / n, "acc5": top5 / n, "count": int(n)}

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
