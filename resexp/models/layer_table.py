"""A network's layer table (Keras-style: one row per executed layer, then parameter totals) and its
parameter counts; `python -m resexp.summary` prints it, every run writes it to model_summary.txt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BN running statistics are buffers, not parameters: not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_buffers(model: nn.Module) -> int:
    """Floating-point buffers: BN running mean/var, which Keras lists as non-trainable weights.
    The integer num_batches_tracked counters have no Keras counterpart and are left out."""
    return sum(b.numel() for b in model.buffers() if b.is_floating_point())


def _shape(out) -> str:
    if isinstance(out, torch.Tensor):
        return str(list(out.shape))
    if isinstance(out, (tuple, list)):
        return ", ".join(_shape(o) for o in out)
    return type(out).__name__


def model_summary(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> str:
    """Run one forward pass on zeros of `input_shape` and tabulate every layer that holds weights or
    has no sub-layers (Identity placeholders are skipped), in execution order."""
    rows: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            # A layer called twice (the shared ReLU of a block) gets a row per call; its
            # parameters are listed on the first, so the column adds up to the total.
            own = 0 if name in seen else sum(p.numel() for p in module.parameters(recurse=False))
            seen.add(name)
            rows.append((name, type(module).__name__, _shape(output), f"{own:,}"))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and not isinstance(m, nn.Identity)
               and (not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False)))]
    was_training = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(*input_shape, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None and param.is_floating_point() else None)
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    header = ("Layer", "Type", "Output shape", "Params")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    fmt = lambda r: "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                               r[3].rjust(widths[3])])
    rule = "=" * len(fmt(header))
    params, trainable, buffers = count_params(model), count_params(model, True), count_buffers(model)
    frozen = params - trainable
    return "\n".join([
        f'Model: "{type(model).__name__}"  input {list(input_shape)} -> output {_shape(out)}',
        rule, fmt(header), rule.replace("=", "-"), *map(fmt, rows), rule,
        f"Total params: {params + buffers:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {frozen + buffers:,} ({frozen:,} frozen parameters + {buffers:,} "
        f"buffers: BN running statistics)",
        f"Parameters (torch, without buffers): {params:,}",
    ])


def summary_text(model: nn.Module, name: str, num_classes: int, in_channels: int, image_size: int) -> str:
    """A header naming the network and its input, then model_summary's table."""
    shape = (1, in_channels, image_size, image_size)
    return (f"{name}: {num_classes} classes, input {list(shape[1:])} (channels, height, width)\n"
            + model_summary(model, shape))
