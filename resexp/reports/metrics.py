"""Per-class numbers from predictions: a confusion matrix and precision / recall / F1 / support."""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [num_classes, num_classes]: row = true class, column = predicted class."""
    idx = targets.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(cm: torch.Tensor, class_names: list[str]) -> dict[str, dict]:
    """{class name: {precision, recall, f1, support}}, in class order. A class that is never
    predicted (or never present) gets precision (recall) 0.0, as scikit-learn's zero_division=0."""
    cm = cm.double()
    tp = cm.diag()
    predicted, support = cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    out: dict[str, dict] = {}
    for i in range(cm.shape[0]):
        name = str(class_names[i]) if i < len(class_names) else str(i)
        if name in out:  # two classes with the same display name: keep both
            name = f"{name} ({i})"
        out[name] = {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                     "f1": round(float(f1[i]), 6), "support": int(support[i])}
    return out
