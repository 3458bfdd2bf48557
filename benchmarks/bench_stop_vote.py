"""What the DDP stop vote (resexp/train/signals.py, StopVote) costs: the same DDP steps with a vote at
every step and without one, alternating blocks of steps in one run, medians, and the time spent inside
a vote (waiting for the previous sum, starting the next); the trainer votes every StopVote.EVERY steps.

    python -m torch.distributed.run --nproc_per_node=2 --standalone benchmarks/bench_stop_vote.py

Gloo on CPU here (the vote's own group is Gloo on GPUs too, beside NCCL's).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
from bench_common import cpu_name  # noqa: I001 - puts the checkout on sys.path first
from torch import nn

from resexp.models import create
from resexp.train.signals import StopVote

BLOCK, REPEATS = 40, 7


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(create("resnet20", num_classes=4, image_size=16))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    vote, in_vote = StopVote(), []

    def step(with_vote: bool) -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if with_vote:
            t0 = time.perf_counter()
            assert not vote.at_step(False, step=0)  # a vote at every step
            in_vote.append(time.perf_counter() - t0)

    for _ in range(10):  # warm-up, both paths
        step(False)
        step(True)
    times = {False: [], True: []}
    for _ in range(REPEATS):
        for with_vote in (False, True):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(BLOCK):
                step(with_vote)
            times[with_vote].append((time.perf_counter() - t0) / BLOCK)
    vote.close()
    if dist.get_rank() == 0:
        base, voted = statistics.median(times[False]), statistics.median(times[True])
        print(f"{cpu_name()}, 2 processes (Gloo), ResNet-20, batch 16 per process, 16x16")
        print(f"step without the vote {base * 1e3:.2f} ms, with it {voted * 1e3:.2f} ms: "
              f"ratio {voted / base:.3f}; inside the vote (wait for the previous sum, start the next) "
              f"{statistics.median(in_vote) * 1e6:.0f} us a step (median)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
