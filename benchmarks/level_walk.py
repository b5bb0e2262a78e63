"""Can the stage-3 network count the thoracic bodies? Walks up the spine from T12 and prints figures.

The experts count the levels from T1 (bundle/docs, "Why 0.90 is out of reach"), and the set labels only T12-L5. This
experiment needs no thoracic labels: it walks up from the expert T12 one body at a time with the shipped stage-3
network (``models/refine.pt``, which draws the vertebra at the centre of a window) and counts the bodies between
T12 and the image's top edge. Each step probes a window at the last body + ``--shrink`` times the last step (the
first step is L1 -> T12), sized as stage 3 sizes T12's and scaled with the step; the body is the window's
centre-class component (probability over 0.5) that lies ``--lo``-``--hi`` expected steps above the last body,
nearest the probe; where there is none, a virtual body is put at the probe. The walk ends when the probe leaves the
top edge. The *counted position* of T12 is the number of bodies above it plus the fraction of the next step that
fits above the top body.

Printed, over every labelled case of ``dataset.json``: how many bodies lie above T12; the spread (robust sd, from
the median absolute deviation) of the counted position and of the height-fraction position that the networks
follow (``spine_seg.label_audit.level_z``, in pitches); how far a second walk, started at L2, agrees; and how many
cases three rules name as the experts did: the height fraction alone, the count alone, both (a 2D Gaussian fitted
on the training cases of ``--fold``), on the training and the validation cases of that fold. CPU, no randomness.

    python benchmarks/level_walk.py --dataset-json data/aasce/dataset.json --figure docs/figures/level_walk.png
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import ScaleIntensityRangePercentiles
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm import tqdm

from spine_seg.atomic import atomic_path
from spine_seg.dataset_json import read_dataset_json
from spine_seg.label_audit import level_z, measure
from spine_seg.model_export import load_network
from spine_seg.nifti_io import read_nifti
from spine_seg.overlay import overlay_rgb
from spine_seg.predict import DEFAULT_BUNDLE

# (centre row, col), side (px) -> the window's probability map where it lies inside the image, and the image row
# and column of that map's first pixel
Segmenter = Callable[[tuple[float, float], float], tuple[np.ndarray, tuple[int, int]]]


class Body(NamedTuple):
    """A vertebral body the walk found (``found``) or put at its probe: centre (px) and bounding box (px)."""

    row: float
    col: float
    height: int
    width: int
    found: bool


def components(prob: np.ndarray, origin: tuple[int, int]) -> list[tuple[float, Body]]:
    """Area (px) and body of each component of ``prob > 0.5`` (a window's map; ``origin``: the image row and column
    of its first pixel), in image coordinates; none for an empty map (a window wholly off the image)."""
    labels, count = ndimage.label(prob > 0.5)
    if not count:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(labels > 0, labels, index)
    centres = np.array(ndimage.center_of_mass(labels > 0, labels, index)) + origin
    return [(float(area), Body(float(row), float(col), rows.stop - rows.start, cols.stop - cols.start, True))
            for area, (row, col), (rows, cols) in zip(areas, centres, ndimage.find_objects(labels), strict=True)]


def walk(segment: Segmenter, start: np.ndarray, below: np.ndarray, start_side: float, shrink: float = 0.96,
         lo: float = 0.75, hi: float = 1.25, min_area: float = 0.1, max_steps: int = 40) -> list[Body]:
    """The bodies above ``start`` (centroid row, col of the start vertebra; ``below``: the one beneath it), bottom
    up. ``start_side`` is the start vertebra's window side; later windows scale with the expected step. A
    component counts when its area is at least ``min_area`` of the window's (squared) side over 1.6**2."""
    cur, step = np.asarray(start, float), np.asarray(start, float) - np.asarray(below, float)
    first = float(np.linalg.norm(step))
    out: list[Body] = []
    for _ in range(max_steps):
        expected = step * shrink
        length = float(np.linalg.norm(expected))
        probe = cur + expected
        if probe[0] < 0 or length < 1:
            break
        side = start_side * length / first
        best: tuple[float, Body] | None = None
        for area, body in components(*segment((float(probe[0]), float(probe[1])), side)):
            if area >= min_area * (side / 1.6) ** 2 and lo * length <= cur[0] - body.row <= hi * length:
                distance = float(np.hypot(body.row - probe[0], body.col - probe[1]))
                if best is None or distance < best[0]:
                    best = distance, body
        found = best[1] if best else Body(float(probe[0]), float(probe[1]), 0, 0, False)
        nxt = np.array([found.row, found.col])
        step, cur = nxt - cur, nxt
        out.append(found)
    return out


def counted_position(start_row: float, bodies: list[Body], reference_row: float | None = None) -> float:
    """Bodies above the walk's body nearest ``reference_row`` (default: the start) plus the fraction of the last
    step that fits above the top body; NaN without a body above the start."""
    rows = [start_row] + [b.row for b in bodies]
    if len(rows) < 2:
        return float("nan")
    ref = 0 if reference_row is None else int(np.argmin(np.abs(np.array(rows) - reference_row)))
    return (len(rows) - 1 - ref) + rows[-1] / (rows[-2] - rows[-1])


def window_segmenter(network: torch.nn.Module, image: np.ndarray, size: int) -> Segmenter:
    """Stage 3 as the bundle runs it (``scripts.vertebra_windows``) on one probe: the centre-class probability of
    the ``side`` square window at ``centre`` of ``image`` (``R x C``, scaled to [0, 1]), on the window's pixels
    inside the image, with the image row and column of its first pixel."""
    from scripts.vertebra_geometry import window_overlap
    from scripts.vertebra_windows import window_probabilities

    def segment(centre: tuple[float, float], side: float) -> tuple[np.ndarray, tuple[int, int]]:
        window = (centre[0], centre[1], side)
        (prob,) = window_probabilities(network, image, [window], size)
        _, (rows, cols), part = window_overlap(window, image.shape)
        return prob[part], (rows.start, cols.start)

    return segment


def walk_panel(image: np.ndarray, label: np.ndarray, bodies: list[Body], height: int = 640) -> Image.Image:
    """The radiograph with its expert labels tinted, a green box on each body the walk found and a yellow cross
    where it put a virtual one, scaled to ``height`` pixels."""
    picture = Image.fromarray(overlay_rgb(image, label))
    draw = ImageDraw.Draw(picture)
    line = max(2, image.shape[0] // 400)
    for b in bodies:
        if b.found:
            draw.rectangle([b.col - b.width / 2, b.row - b.height / 2, b.col + b.width / 2, b.row + b.height / 2],
                           outline=(0, 255, 0), width=line)
        else:
            r = 6 * line
            draw.line([b.col - r, b.row - r, b.col + r, b.row + r], fill=(255, 255, 0), width=line)
            draw.line([b.col - r, b.row + r, b.col + r, b.row - r], fill=(255, 255, 0), width=line)
    return picture.resize((max(1, round(image.shape[1] * height / image.shape[0])), height))


def save_panels(path: Path, panels: list[Image.Image]) -> None:
    """The panels side by side in one PNG, written atomically."""
    out = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)))
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")


def robust_sd(x: np.ndarray) -> float:
    """1.4826 times the median absolute deviation (the sd of a normal sample), NaNs left out."""
    x = x[~np.isnan(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def naming_rules(counted: np.ndarray, height: np.ndarray, train: np.ndarray) -> dict[str, np.ndarray]:
    """Per case, the level shift (-2..2) each rule reads off T12's counted position and its height-fraction
    position (``level_z``, in pitches; both 0 at the training median): 0 names T12 as the experts did."""
    x = np.stack([counted - np.nanmedian(counted[train]), height], 1)
    x[np.isnan(x[:, 0]), 0] = 0.0
    bulk = train & (np.abs(x[:, 0]) < 2) & (np.abs(x[:, 1]) < 1.5)
    mean, inv = x[bulk].mean(0), np.linalg.pinv(np.atleast_2d(np.cov(x[bulk].T)))
    shifts = np.arange(-2, 3)
    dist = [np.einsum("ni,ij,nj->n", x - s - mean, inv, x - s - mean) for s in shifts]
    return {"height fraction alone": np.rint(height).clip(-2, 2), "count alone": np.rint(x[:, 0]).clip(-2, 2),
            "both": shifts[np.argmin(np.stack(dist), 0)]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-json", type=Path, required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--shrink", type=float, default=0.96)
    parser.add_argument("--lo", type=float, default=0.75)
    parser.add_argument("--hi", type=float, default=1.25)
    parser.add_argument("--figure", type=Path, help="PNG of the walks on the --figure-cases, side by side")
    parser.add_argument("--figure-cases", default="001,082,102,104,008")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.bundle))  # the bundle's `scripts` package, as `monai.bundle run` adds it
    from scripts.vertebra_geometry import vertebra_windows

    config = ConfigParser()
    config.read_config(str(args.bundle / "configs" / "inference.json"))
    ratio, size = float(config["refine_ratio"]), int(config["refine_size"])
    network = load_network(args.bundle / "models" / "refine.pt", args.bundle, "refine_network_def")
    scale = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True, dtype=np.float32)
    meta = read_dataset_json(args.dataset_json)
    num = len(meta["labels"]) - 1
    walk_args = {"shrink": args.shrink, "lo": args.lo, "hi": args.hi}
    counts, counted, from_l2, virtual, geometries, folds, t12_depth = [], [], [], [], [], [], []
    shown = args.figure_cases.split(",")
    panels: dict[str, Image.Image] = {}
    for case in tqdm(meta["training"], desc="walk", unit="case"):
        image = np.asarray(scale(read_nifti(args.dataset_json.parent / case["image"]).astype(np.float32)))
        label = read_nifti(args.dataset_json.parent / case["label"]).astype(np.uint8)
        if not all((label == k).any() for k in (1, 2, 3, 4)):
            continue
        segment = window_segmenter(network, image, size)
        t12, l1, l2, l3 = np.array(ndimage.center_of_mass(label > 0, label, [1, 2, 3, 4]))
        sides = {k: window[2] for k, window in vertebra_windows(label, 3, ratio).items()}
        bodies = walk(segment, t12, l1, sides[1], **walk_args)
        if args.figure and case["id"] in shown:
            panels[case["id"]] = walk_panel(image, label, bodies)
        counts.append(len(bodies))
        virtual.append(sum(not b.found for b in bodies))
        counted.append(counted_position(t12[0], bodies))
        from_l2.append(counted_position(l2[0], walk(segment, l2, l3, sides[3], **walk_args), t12[0]))
        geometry = measure(label, num)
        geometries.append(geometry)
        folds.append(case["fold"])
        t12_depth.append(t12[0] / geometry.pitch)
    counted_a, from_l2_a, depth = np.array(counted), np.array(from_l2), np.array(t12_depth)
    height, train = level_z(geometries), np.array(folds) != args.fold
    print(f"{len(counts)} cases; bodies found above T12: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(Counter(counts).items()))
          + f"; {sum(v > 0 for v in virtual)} walks with a virtual body")
    print(f"T12's counted position: median {np.nanmedian(counted_a):.2f} bodies, robust sd {robust_sd(counted_a):.2f}; "
          f"height-fraction position (level_z): robust sd {robust_sd(height):.2f} pitches")
    ok = ~np.isnan(counted_a)
    if ok.sum() > 2 and np.ptp(counted_a[ok]) > 0:
        corr = [np.corrcoef(counted_a[ok], other[ok])[0, 1] for other in (depth, height)]
        print(f"correlation of the counted position with T12's depth below the top edge (in pitches): {corr[0]:.2f}; "
              f"with level_z: {corr[1]:.2f}")
    else:
        print(f"correlation of the counted position: n/a ({int(ok.sum())} cases with a body above T12)")
    agree = np.abs(from_l2_a - counted_a)
    print(f"a second walk from L2 gives T12's counted position within 0.5 of the first in {np.mean(agree < 0.5):.0%} "
          f"of the cases, within 0.25 in {np.mean(agree < 0.25):.0%}")
    if args.figure and panels:
        save_panels(args.figure, [panels[c] for c in shown if c in panels])
        print(f"walks of cases {', '.join(c for c in shown if c in panels)}: {args.figure}")
    for name, shift in naming_rules(counted_a, height, train).items():
        right = shift == 0
        print(f"{name}: names T12 as the experts did in {int(right[train].sum())} of {int(train.sum())} training "
              f"cases, {int(right[~train].sum())} of {int((~train).sum())} fold-{args.fold} validation cases")


if __name__ == "__main__":
    main()
