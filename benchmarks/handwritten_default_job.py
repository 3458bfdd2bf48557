"""The default job (`python -m resexp`: ResNet-20 on scikit-learn's digits, 10 epochs) as a PyTorch user
writes it by hand, to time resexp against: the same data split sizes, network, optimizer, schedule and
batch size; a validation pass each epoch and the best weights saved. No report, no TensorBoard, no config.

    python benchmarks/handwritten_default_job.py [out_dir]
"""

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x  # option A: subsample, pad channels
        if self.pad:
            s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(y + s)


def resnet20(classes=10):
    layers, cin = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def main(out: Path) -> None:
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    tr, va = train_test_split(range(len(y)), test_size=0.2, stratify=y.numpy(), random_state=0)
    x = (x - 0.3055) / 0.376
    xt, yt, xv, yv = x[tr], y[tr], x[va], y[va]
    model = resnet20()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    epochs, batch = 10, 64
    steps = math.ceil(len(yt) / batch)
    warm = lambda s: 0.1 + 0.9 * min(s / steps, 1.0)  # noqa: E731 - 1 warm-up epoch, then cosine
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warm(s) * 0.5 * (1 + math.cos(math.pi * min(max(s / steps - 1, 0) / (epochs - 1), 1))))
    best = 0.0
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(yt)).split(batch):
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xv).argmax(1) == yv).float().mean().item()
        print(f"epoch {epoch + 1} val acc {acc:.4f}")
        if acc > best:
            best = acc
            torch.save(model.state_dict(), out / "best.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "handwritten_out"))
