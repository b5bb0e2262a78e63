"""Does a third stage, one window per vertebra at about twice stage 2's resolution, draw better outlines?

Where the cascade names the levels right, its vertebrae score a mean Dice of 0.79 (bundle/docs, "Why 0.90 is
out of reach"): 40 % of the wrong pixels lie one to three stage-2 grid pixels (4-16 px) from the expert
outline. This experiment cuts a square window around each vertebra, ``--ratio`` times its larger side, resizes
it to ``--size`` pixels (about 2 px of the radiograph per pixel, against about 4-5 for stage 2) and trains a
``BasicUNet`` to draw that vertebra in it: classes background, the vertebra at the window's centre, the other
labelled vertebrae (``DiceCELoss``, softmax). Training windows come from the expert labels of the training cases
of ``--fold``, moved and scaled at random so that they are as imperfect as the cascade's; left-right flip,
rotation, gamma.

At inference the windows come from the cascade's prediction (``make evaluate``'s ``pred/``): each predicted
vertebra's window is refined, the centre-class probabilities are pasted back at the original size, and each
pixel takes the vertebra of the highest probability where that is over 0.5 (else background). Nothing is
renamed: the refinement keeps each window's label. Printed: the mean Dice over the validation cases of the
refined masks against the cascade's, paired case by case (``spine_seg.eval_compare``: 95 % bootstrap interval,
Wilcoxon p), over all cases and over those the cascade names right, and the refined masks' mean Dice with
windows from the expert labels (the refinement's ceiling when the cascade's vertebrae are found and named right).
Seeded; CPU (bfloat16 autocast where the CPU has native bf16) or CUDA.

    python benchmarks/vertebra_refine.py --eval-dir out/eval
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from monai.transforms import ScaleIntensityRangePercentiles
from scipy import ndimage
from tqdm import tqdm

from spine_seg.dataset_json import read_dataset_json
from spine_seg.eval_compare import paired_difference
from spine_seg.evaluation_table import level_shift, mean_dice
from spine_seg.nifti_io import read_nifti

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))  # the bundle's `scripts` package
from scripts.autocast import cpu_has_bf16  # noqa: E402

BATCH = 16
CACHE = 1.5  # training windows are cached this much larger than ``--ratio``, for the random moves


def windows(label: np.ndarray, num: int, ratio: float) -> dict[int, tuple[float, float, float]]:
    """Per structure present in ``label`` (``R x C``, values 0..num): its box centre (row, column) and the side
    of its square window, ``ratio`` times the box's larger side, all in pixels."""
    out = {}
    for k, box in enumerate(ndimage.find_objects(label, num), 1):
        if box is not None:
            rows, cols = box
            side = ratio * max(rows.stop - rows.start, cols.stop - cols.start)
            out[k] = ((rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2, side)
    return out


def _overlap(window: tuple[float, float, float], shape: tuple[int, ...]) -> tuple[int, tuple, tuple]:
    """The window's side in whole pixels, and the slices of its part inside an image of ``shape``: in the image
    and in the window (empty where it lies wholly outside)."""
    row, col, side = window
    size = max(int(round(side)), 1)
    r0, c0 = int(round(row - size / 2)), int(round(col - size / 2))
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = max(min(r0 + size, shape[0]), rs), max(min(c0 + size, shape[1]), cs)
    return size, (slice(rs, re), slice(cs, ce)), (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))


def cut(image: np.ndarray, window: tuple[float, float, float], size: int, mode: str = "bilinear") -> torch.Tensor:
    """The square ``window`` of ``image`` (``R x C``), zero outside the image, resized to ``1 x size x size``."""
    side, inside, part = _overlap(window, image.shape)
    patch = np.zeros((side, side), dtype=np.float32)
    patch[part] = image[inside]
    smooth = {"antialias": True} if mode == "bilinear" else {}
    return F.interpolate(torch.from_numpy(patch)[None, None], size=(size, size), mode=mode, **smooth)[0]


def paste(prob: torch.Tensor, window: tuple[float, float, float], shape: tuple[int, int]) -> np.ndarray:
    """A ``size x size`` window probability back on the ``shape`` grid (bilinear; zero outside the window)."""
    side, inside, part = _overlap(window, shape)
    out = np.zeros(shape, dtype=np.float32)
    out[inside] = F.interpolate(prob[None, None].float(), size=(side, side), mode="bilinear")[0, 0].numpy()[part]
    return out


def augment(x: torch.Tensor, y: torch.Tensor, size: int, move: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random window move (up to ``move`` of its side), scale (0.85-1.15), rotation (+-0.2 rad), left-right flip
    and gamma on cached windows ``B x 1 x S x S`` (``S = CACHE * size``); returns ``B x 1 x size x size``."""
    b = x.shape[0]
    zoom = torch.empty(b).uniform_(0.85, 1.15) / CACHE
    angle = torch.empty(b).uniform_(-0.2, 0.2)
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = flip * zoom * torch.cos(angle), -zoom * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = flip * zoom * torch.sin(angle), zoom * torch.cos(angle)
    theta[:, :, 2] = torch.empty(b, 2).uniform_(-move, move) * 2 / CACHE
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False).clamp(0, 1) ** torch.empty(b, 1, 1, 1).uniform_(0.7, 1.5)
    return x, F.grid_sample(y, grid, mode="nearest", align_corners=False)


def case_arrays(dataset_json: Path, case: dict) -> tuple[np.ndarray, np.ndarray]:
    """A case's image (percentile-scaled to [0, 1]) and label (``R x C``) at the original size."""
    scale = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True, dtype=np.float32)
    image = np.asarray(scale(read_nifti(dataset_json.parent / case["image"]).astype(np.float32)))
    return image, read_nifti(dataset_json.parent / case["label"]).astype(np.uint8)


def training_windows(dataset_json: Path, cases: list[dict], num: int, ratio: float, size: int) -> tuple:
    """Every expert vertebra of ``cases`` as a cached window: images ``N x 1 x S x S`` in [0, 1] and targets
    (0 background, 1 the window's vertebra, 2 the other vertebrae), ``S = CACHE * size``."""
    images, targets = [], []
    big = int(round(CACHE * size))
    for case in tqdm(cases, desc="windows", unit="case"):
        image, label = case_arrays(dataset_json, case)
        for k, window in windows(label, num, ratio * CACHE).items():
            images.append(cut(image, window, big))
            target = np.where(label == k, 1, np.where(label > 0, 2, 0)).astype(np.float32)
            targets.append(cut(target, window, big, mode="nearest-exact"))
    return torch.stack(images), torch.stack(targets)


@torch.no_grad()
def refine(net: torch.nn.Module, image: np.ndarray, source: np.ndarray, num: int, ratio: float, size: int,
           device: torch.device) -> np.ndarray:
    """``source``'s vertebrae (``R x C``, 0..num) redrawn by ``net`` in their windows, at the original size."""
    found = windows(source, num, ratio)
    if not found:
        return np.zeros_like(source)
    x = torch.stack([cut(image, w, size) for w in found.values()]).to(device)
    prob = torch.softmax(net(x).float(), 1)[:, 1].cpu()
    maps = np.stack([np.zeros(source.shape, np.float32)] + [paste(p, w, source.shape) for p, w in
                                                            zip(prob, found.values(), strict=True)])
    labels = np.array([0, *found])
    best = maps.argmax(0)
    return np.where(maps.max(0) > 0.5, labels[best], 0).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset-json", type=Path, default=Path("data/aasce/dataset.json"))
    ap.add_argument("--eval-dir", type=Path, required=True, help="make evaluate's output (its pred/ folder)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--size", type=int, default=128, help="window grid, pixels a side")
    ap.add_argument("--ratio", type=float, default=1.6, help="window side / the vertebra's larger side")
    ap.add_argument("--move", type=float, default=0.08, help="random window move, fraction of its side")
    ap.add_argument("--features", type=int, nargs=6, default=[32, 32, 64, 128, 256, 32])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--every", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cpu" and cpu_has_bf16()
    meta = read_dataset_json(args.dataset_json)
    num = len(meta["labels"]) - 1
    train = [c for c in meta["training"] if c["fold"] != args.fold]
    val = [c for c in meta["training"] if c["fold"] == args.fold]
    images, targets = training_windows(args.dataset_json, train, num, args.ratio, args.size)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=tuple(args.features)).to(device)
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True, batch=True)
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    steps = args.epochs * math.ceil(len(images) / BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        net.train()
        order = torch.from_numpy(rng.permutation(len(images)))
        total = 0.0
        for i in range(0, len(order), BATCH):
            x, y = augment(images[order[i:i + BATCH]], targets[order[i:i + BATCH]], args.size, args.move)
            opt.zero_grad()
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = net(x.to(device))
            value = loss_fn(logits.float(), y.to(device))
            value.backward()
            opt.step()
            sched.step()
            total += float(value.detach()) * len(x)
        if epoch % args.every == 0 or epoch == args.epochs:
            print(f"epoch {epoch}: training loss {total / len(images):.4f} ({time.time() - start:.0f} s)", flush=True)
    net.eval()
    rows = []
    for case in tqdm(val, desc="refine", unit="case"):
        image, label = case_arrays(args.dataset_json, case)
        cascade = read_nifti(args.eval_dir / "pred" / f"{case['id']}_seg.nii.gz").astype(np.uint8)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            refined = refine(net, image, cascade, num, args.ratio, args.size, device)
            ceiling = refine(net, image, label, num, args.ratio, args.size, device)
        rows.append((level_shift(cascade, label, num) == 0, mean_dice(cascade, label, num),
                     mean_dice(refined, label, num), mean_dice(ceiling, label, num)))
    named, cascade, refined, ceiling = (np.array(column) for column in zip(*rows, strict=True))
    for name, subset in (("all", np.ones_like(named)), ("named right by the cascade", named)):
        print(f"{name}: refined against the cascade, {paired_difference(refined[subset], cascade[subset])}; "
              f"expert windows refined {ceiling[subset].mean():.3f}")


if __name__ == "__main__":
    main()
