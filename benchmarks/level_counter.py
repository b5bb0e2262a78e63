"""Can a network with whole-spine context name the levels? Trains a level counter and prints figures.

The cascade names the levels of 18 of fold 0's 95 validation cases off (bundle/docs, "Why 0.90 is out of reach"),
and its U-Nets see at most about 70 % of the image height at once. This experiment gives a network the whole
radiograph at a finer grid than stage 1's and a receptive field over the whole height: a 2D encoder (stride 4),
attention pooling over the columns (so a scoliotic curve is followed), and a dilated 1D residual stack over the
rows (receptive field > the height). For each structure it outputs a softmax over the rows: where that
structure's centroid lies. It is trained with cross-entropy against a Gaussian (sd 1 row) around the expert
centroid, on the training cases of ``--fold``, with a left-right flip, zoom, rotation, gamma and a vertical
shift of up to ``--shift`` of the image height.

Printed: every ``--every`` epochs, how many validation cases it names right (the median over the structures of
(predicted - expert row) / the case's pitch, rounded, is 0) and how many of 95 training cases; at the end, the
same for the structures' median place over the training labels (the position prior), and with ``--eval-dir``
(``make evaluate``'s output) a cross-table against the cascade's naming and against whether the case's expert
levels sit within half a vertebra of the set's usual place (``spine_seg.label_audit``). Seeded; CPU or CUDA.

    python benchmarks/level_counter.py --eval-dir out/eval            # 512 x 128 grid, 60 epochs, shift 0.03
    python benchmarks/level_counter.py --eval-dir out/eval --shift 0.1
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRangePercentiles
from torch import nn
from tqdm import tqdm

from spine_seg.dataset_json import read_dataset_json
from spine_seg.evaluation_table import level_shift
from spine_seg.label_audit import OFF_PRIOR, level_z, measure
from spine_seg.nifti_io import read_nifti

BATCH = 8


def load(dataset_json: Path, grid: tuple[int, int]) -> dict:
    """Every training case: image on ``grid`` (percentile-scaled to [0, 1]), label geometry, fold, id."""
    meta = read_dataset_json(dataset_json)
    num = len(meta["labels"]) - 1
    scale = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True, dtype=np.float32)
    images, geometries = [], []
    for case in tqdm(meta["training"], desc="load", unit="case"):
        scaled = torch.as_tensor(np.asarray(scale(read_nifti(dataset_json.parent / case["image"]).astype(np.float32))))
        images.append(F.interpolate(scaled[None, None], size=grid, mode="bilinear", antialias=True)[0])
        geometries.append(measure(read_nifti(dataset_json.parent / case["label"]).astype(np.uint8), num))
    return {
        "image": torch.stack(images),
        "rows": torch.tensor(np.array([g.rows / g.height for g in geometries]), dtype=torch.float32),
        "z": level_z(geometries),
        "fold": np.array([c["fold"] for c in meta["training"]]),
        "ids": [c["id"] for c in meta["training"]],
        "labels": [dataset_json.parent / c["label"] for c in meta["training"]],
        "num": num,
    }


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.1),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.1),
    )


class _Residual1d(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, 3, 1, dilation, dilation), nn.InstanceNorm1d(channels, affine=True),
            nn.LeakyReLU(0.1), nn.Conv1d(channels, channels, 3, 1, dilation, dilation),
            nn.InstanceNorm1d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.body(x), 0.1)


class LevelCounter(nn.Module):
    """``B x 1 x H x W`` radiograph -> ``B x N x H/4`` logits over the rows, one softmax per structure."""

    def __init__(self, num_structures: int, channels: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            _block(1, 16), _block(16, 32, 2), _block(32, channels, 2), _block(channels, channels)
        )
        self.attention = nn.Conv2d(channels, 1, 1)
        self.rows = nn.Sequential(
            nn.Conv1d(channels + 1, channels, 1), *[_Residual1d(channels, d) for d in (1, 2, 4, 8, 16, 32, 64, 1)]
        )
        self.head = nn.Conv1d(channels, num_structures, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        pooled = (features * torch.softmax(self.attention(features), dim=3)).sum(3)
        position = torch.linspace(0, 1, pooled.shape[2], device=x.device).expand(pooled.shape[0], 1, -1)
        return self.head(self.rows(torch.cat([pooled, position], 1)))


def augment(x: torch.Tensor, rows: torch.Tensor, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip, zoom (0.9-1.1), rotation (+-0.1 rad), vertical shift (+-``shift`` of the height), gamma;
    ``rows`` (fractions of the height) follow the zoom and shift."""
    b = x.shape[0]
    zoom_y, zoom_x = torch.empty(b).uniform_(0.9, 1.1), torch.empty(b).uniform_(0.9, 1.1)
    angle, offset = torch.empty(b).uniform_(-0.1, 0.1), torch.empty(b).uniform_(-shift, shift) * 2
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = flip / zoom_x * torch.cos(angle), -torch.sin(angle) / zoom_y
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = torch.sin(angle) / zoom_x, torch.cos(angle) / zoom_y, offset
    x = F.grid_sample(x, F.affine_grid(theta.to(x), list(x.shape), align_corners=False), align_corners=False)
    x = x.clamp(0, 1) ** torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.7, 1.5)
    moved = ((rows * 2 - 1) - offset[:, None].to(rows)) * zoom_y[:, None].to(rows)
    return x, (moved + 1) / 2


def loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each structure's softmax over the rows against a Gaussian (sd 1 row) at its centroid."""
    index = torch.arange(logits.shape[2], device=logits.device, dtype=torch.float32)
    target = torch.exp(-0.5 * (index - (rows[..., None] * logits.shape[2] - 0.5)) ** 2)
    return -(target / target.sum(-1, keepdim=True) * F.log_softmax(logits, -1)).sum(-1).mean()


@torch.no_grad()
def centroids(net: LevelCounter, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Predicted centroid rows (fractions of the height): the mean over +-2 rows around each softmax's peak."""
    net.eval()
    p = torch.cat([torch.softmax(net(images[i:i + BATCH].to(device)), -1).cpu() for i in range(0, len(images), BATCH)])
    index = torch.arange(p.shape[2], dtype=torch.float32)
    near = p * ((index - p.argmax(-1, keepdim=True)).abs() <= 2)
    return ((near * index).sum(-1) / near.sum(-1) + 0.5) / p.shape[2]


def naming_offsets(pred: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
    """Per case: the median over structures of (predicted - expert row) / the case's pitch, rounded."""
    pitch = (rows[:, -1] - rows[:, 0]) / (rows.shape[1] - 1)
    return torch.round(torch.nanmedian((pred - rows) / pitch[:, None], 1).values).int().numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset-json", type=Path, default=Path("data/aasce/dataset.json"))
    ap.add_argument("--eval-dir", type=Path, help="make evaluate's output, for the cascade's naming")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--grid", type=int, nargs=2, default=[512, 128], metavar=("ROWS", "COLS"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--shift", type=float, default=0.03, help="vertical shift, fraction of the height")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load(args.dataset_json, tuple(args.grid))
    rows = data["rows"]
    train = np.flatnonzero((data["fold"] != args.fold) & ~torch.isnan(rows).any(1).numpy())
    val = np.flatnonzero(data["fold"] == args.fold)
    net = LevelCounter(data["num"]).to(device)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, 2e-3, total_steps=args.epochs * math.ceil(len(train) / BATCH), pct_start=0.1
    )
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = rng.permutation(train)
        for i in range(0, len(order), BATCH):
            x, r = augment(data["image"][order[i:i + BATCH]], rows[order[i:i + BATCH]], args.shift)
            opt.zero_grad()
            loss(net(x.to(device)), r.to(device)).backward()
            opt.step()
            sched.step()
        if epoch % args.every == 0 or epoch == args.epochs:
            counter = naming_offsets(centroids(net, data["image"][val], device), rows[val]) == 0
            seen = train[:len(val)]
            right_train = int((naming_offsets(centroids(net, data["image"][seen], device), rows[seen]) == 0).sum())
            print(f"epoch {epoch}: named right {int(counter.sum())}/{len(val)} validation, {right_train}/{len(seen)} "
                  f"training cases ({time.time() - start:.0f} s)", flush=True)
    prior = naming_offsets(torch.nanmedian(rows[train], 0).values.expand(len(val), -1), rows[val]) == 0
    print(f"position prior (median place over the training labels): {int(prior.sum())}/{len(val)} named right; "
          f"level counter: {int(counter.sum())}/{len(val)}")
    if args.eval_dir is None:
        return
    usual = np.abs(data["z"][val]) <= OFF_PRIOR
    cascade = np.array([
        level_shift(read_nifti(args.eval_dir / "pred" / f"{data['ids'][i]}_seg.nii.gz").astype(np.uint8),
                    read_nifti(data["labels"][i]).astype(np.uint8), data["num"]) == 0
        for i in tqdm(val, desc="cascade", unit="case")
    ])
    print(f"cascade ({args.eval_dir}): {int(cascade.sum())}/{len(val)} named right")
    print("cascade right | counter right | expert levels at the usual place | cases")
    for key, n in sorted(Counter(zip(cascade.tolist(), counter.tolist(), usual.tolist(), strict=True)).items()):
        print(f"{key[0]!s:>13} | {key[1]!s:>13} | {key[2]!s:>32} | {n}")


if __name__ == "__main__":
    main()
