"""The run report's figures, drawn with matplotlib's Agg renderer (no display, no pyplot state).

Every function returns a Figure; `render(fig)` draws it once into an RGB array, which the caller
writes as PNG and hands to TensorBoard (what SummaryWriter.add_figure does, without a second draw).
"""

from __future__ import annotations

import logging
import math
import re
import warnings

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from resexp.records.epoch import EpochRecord

log = logging.getLogger("resexp")
WRONG, RIGHT = "#c62828", "#1b5e20"
LABEL_TURN = 60  # degrees: the confusion matrix's column names when one is longer than 3 characters

# Class names in other scripts: matplotlib falls back, glyph by glyph, along font.sans-serif, so the
# installed fonts that have them go after its own default (DejaVu Sans, which has Latin, Greek and Cyrillic)
FALLBACKS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "WenQuanYi Zen Hei",
             "Droid Sans Fallback", "Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari",
             "Noto Sans Thai", "Arial Unicode MS")


def _add_fallback_fonts() -> None:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    families = list(matplotlib.rcParams["font.sans-serif"])
    matplotlib.rcParams["font.sans-serif"] = families + [f for f in FALLBACKS if f in installed and f not in families]


_add_fallback_fonts()
_told_missing = False  # the missing glyphs are said once a process, not once a glyph


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def curves(history: list[EpochRecord], best_epoch: int | None) -> Figure:
    """Loss and accuracy per epoch, train and val; the best epoch marked."""
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.22)
    epochs = [r.epoch for r in history]
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [getattr(r, f"train_{key}") for r in history], "o-", ms=3, label=f"train {label}")
        val = [(r.epoch, getattr(r, f"val_{key}")) for r in history if getattr(r, f"val_{key}") is not None]
        if val:
            ax.plot([e for e, _ in val], [v for _, v in val], "s-", ms=3, label=f"val {label}")
        best = next((v for e, v in val if e == best_epoch), None)
        if best is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1)
            ax.plot([best_epoch], [best], "*", ms=14, color="gold", mec="black",
                    label=f"best epoch {best_epoch}", zorder=5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if epochs:
        for ax in (ax_loss, ax_acc):
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
            if max(epochs) - min(epochs) < 12:
                ax.set_xticks(epochs)
    ax_acc.set_ylim(-0.02, 1.02)
    losses = [v for r in history for v in (r.train_loss, r.val_loss) if v is not None]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 50:  # a blow-up would flatten the rest
        ax_loss.set_yscale("log")
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy (fraction)")
    return fig


def confusion(cm: torch.Tensor, class_names: list[str], title: str = "") -> Figure:
    """Rows: true class, columns: predicted; colour = fraction of the row (recall), text = counts.
    Laid out by hand from the labels' measured widths: constrained layout's search for the same
    margins was a third of the figure's time."""
    n = cm.shape[0]
    side = min(max(5.0, 0.45 * n + 3.0), 24.0)
    names = None
    if n <= 50:
        names = [_short(str(c)) for c in class_names] if len(class_names) == n else [str(i) for i in range(n)]
    rotate = names is not None and max(map(len, names)) > 3
    widest, tall = _text_size(names or [str(n)], 8)
    # inches: tick labels (rotated ones stand on their corner), then the axis label, around a square matrix
    left = widest + 0.45
    turn = math.radians(LABEL_TURN)
    below = (widest * math.sin(turn) + tall * math.cos(turn) if rotate else tall) + 0.45
    above = 0.6  # the two-line title
    square = side - below - above
    fig = Figure(figsize=(left + square + 1.35, side))
    width = fig.get_figwidth()
    ax = fig.add_axes((left / width, below / side, square / width, square / side))
    bar = fig.add_axes(((left + square + 0.2) / width, below / side, 0.2 / width, square / side))
    rows = cm.double().sum(1, keepdim=True).clamp(min=1)
    frac = (cm.double() / rows).numpy()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, cax=bar, label="fraction of the row (recall)")
    if names is not None:
        ax.set_xticks(range(n), names, rotation=LABEL_TURN if rotate else 0, ha="right" if rotate else "center",
                      fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = float(cm.diag().sum()) / max(1, int(cm.sum()))
    ax.set_title(f"{title}{' ' if title else ''}confusion matrix\naccuracy {acc:.2%} on {int(cm.sum())} images",
                 fontsize=10)
    return fig


def _text_size(texts: list[str], fontsize: float) -> tuple[float, float]:
    """(widest, tallest) of the texts in inches, as the Agg renderer will draw them."""
    renderer, font = RendererAgg(1, 1, 72), FontProperties(size=fontsize)
    with warnings.catch_warnings():  # a glyph no font has is said once, by render()
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        sizes = [renderer.get_text_width_height_descent(t, font, ismath=False)[:2] for t in texts]
    return max(w for w, _ in sizes) / 72, max(h for _, h in sizes) / 72


def denormalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised NCHW floats -> NHWC in [0, 1] for display."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        x = x * s + m
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def predictions(images: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor, class_names: list[str],
                mean=None, std=None, title: str = "") -> Figure:
    """A grid of images labelled 'predicted (confidence)' and, when wrong, 'true: ...' in red."""
    n = images.shape[0]
    cols = min(n, 4 if n <= 16 else 6)
    rows = max(1, -(-n // cols))
    pics = denormalise(images, mean, std)
    if pics.shape[-1] == 1:
        pics = pics.expand(-1, -1, -1, 3)
    h, w = pics.shape[1:3]
    pad, band = max(1, w // 16), max(4, (h * 3) // 10)  # white gap between cells, label band above each
    # one image holding every cell under one axes: an axes per cell costs ~30 ms each to lay out
    sheet = torch.ones(rows * (h + band) + pad, cols * (w + pad) + pad, 3)
    for k in range(n):
        r, c = divmod(k, cols)
        y, x = r * (h + band) + band, c * (w + pad) + pad
        sheet[y:y + h, x:x + w] = pics[k]
    cell_in = 2.1
    fig = Figure(figsize=(cell_in * cols, cell_in * cols * sheet.shape[0] / sheet.shape[1] + 0.45))
    ax = fig.add_axes((0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    ax.imshow(sheet.numpy(), interpolation="nearest")
    ax.axis("off")
    conf, pred = probs.max(1)

    def name(i: int) -> str:
        return _short(str(class_names[i])) if i < len(class_names) else str(i)

    wrong = 0
    for k in range(n):
        r, c = divmod(k, cols)
        ok = int(pred[k]) == int(targets[k])
        wrong += not ok
        label = f"{name(int(pred[k]))} ({float(conf[k]):.0%})" + ("" if ok else f"\ntrue: {name(int(targets[k]))}")
        ax.text(c * (w + pad) + pad + w / 2, r * (h + band) + band - 0.5, label, ha="center", va="bottom",
                fontsize=8, color=RIGHT if ok else WRONG, fontweight="normal" if ok else "bold")
    fig.suptitle(f"{title}{' ' if title else ''}predicted class (confidence); {wrong} of {n} wrong, in red "
                 f"with the true class", fontsize=10, y=1 - 0.08 / fig.get_figheight(), va="top")
    return fig


def render(fig: Figure, dpi: int = 100) -> np.ndarray:
    """Draw the figure once: uint8 RGB [H, W, 3]. Characters no installed font has (class names in a
    script without a font here) show as boxes: said once, in one line, instead of matplotlib's
    warning for every glyph."""
    global _told_missing
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        canvas.draw()
    missing = {}
    for w in caught:
        glyph = re.match(r"Glyph (\d+) .*missing from font", str(w.message))
        if glyph:
            missing.setdefault(chr(int(glyph[1])), None)
        else:  # anything else is matplotlib's to say
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing and not _told_missing:
        _told_missing = True
        log.warning(f"class names have characters that no installed font has ({''.join(list(missing)[:8])}): they "
                    "show as boxes in the figures; install a font that has them (e.g. Debian's fonts-noto-cjk for "
                    "Chinese, Japanese and Korean) and clear matplotlib's font cache (rm -r ~/.cache/matplotlib)")
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(rgb: np.ndarray, path) -> bytes:
    """Write the PNG; returns its bytes (TensorBoard takes the same encoded image: no second encoding)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return data
