"""Two annotation styles in the expert labels: how far they explain the outline gap, and whether the image tells them.

``make bench-style`` (about 5 min here, after ``make evaluate`` for the evaluation fold and a training fold). The AASCE
source files name their acquisition date; the cases of January 2017 and those of July-December 2016 were drawn
differently: set against the cascade's vertebrae, which follow the bone the same way in both, one group's
quadrilaterals are wider and taller than the other's. This benchmark measures, case group by group:

1. the size of the cascade's vertebrae against the expert's (second moments along the expert vertebra's own axes),
   on a fold the shipped networks were trained on (the factors) and on the evaluation fold;
2. how well a logistic regression on global image statistics, trained on the other folds, tells the group of an
   evaluation case;
3. the mean Dice of the evaluation fold with each predicted vertebra scaled about its centre along its own axes by
   its group's factor: the group known (an upper bound) or taken from the regression's probability; and with every
   case scaled by one group's factors, as for a set known to be drawn in that style, with the share of that group's
   cases above which this beats the unscaled outlines.

Nothing is written; the figures are printed (bundle/docs/README.md, "Why 0.90 is out of reach").
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize
from tqdm import tqdm

from spine_seg.dataset_json import read_dataset_json
from spine_seg.eval_compare import paired_difference
from spine_seg.evaluation_table import dice, mean_dice
from spine_seg.nifti_io import read_nifti

MIN_DICE = 0.5  # vertebrae drawn on another body say nothing about the outline's size


def source_groups(cases_tsv: str | Path) -> dict[str, str]:
    """Case id -> the year in its source file's name (``cases.tsv``: ``split, source_file, case, status``)."""
    with open(cases_tsv, newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["case"]]
    return {r["case"]: re.search(r"-(\d{4})-", r["source_file"]).group(1) for r in rows}


def principal_axes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (row, column; px), axes (2 x 2, columns: major then minor) and the spread (px, rms) along each."""
    points = np.argwhere(mask).astype(np.float64)
    centre = points.mean(axis=0)
    variance, axes = np.linalg.eigh(np.cov((points - centre).T, bias=True))
    return centre, axes[:, ::-1], np.sqrt(variance[::-1])


def size_ratios(pred: np.ndarray, label: np.ndarray, num_structures: int) -> np.ndarray:
    """``(n, 2)``: for each vertebra drawn with a Dice over :data:`MIN_DICE`, the predicted spread along the expert
    vertebra's major (width) and minor (height) axes over the expert's own."""
    ratios = []
    for k in range(1, num_structures + 1):
        expert, drawn = label == k, pred == k
        if not drawn.any() or not expert.any() or dice(drawn, expert) < MIN_DICE:
            continue
        _, axes, spread = principal_axes(expert)
        points = np.argwhere(drawn) - np.argwhere(drawn).mean(axis=0)
        ratios.append(np.sqrt(((points @ axes) ** 2).mean(axis=0)) / spread)
    return np.array(ratios).reshape(-1, 2)


def scale_vertebrae(class_map: np.ndarray, factors: tuple[float, float], num_structures: int) -> np.ndarray:
    """Each vertebra of an ``R x C`` class map scaled about its centre by ``factors`` (along its major, minor axis;
    bilinear on the mask, kept where >= 0.5). Where two touch, the upper keeps the pixel, as in the expert labels."""
    out = np.zeros_like(class_map)
    for k in range(num_structures, 0, -1):
        mask = class_map == k
        if not mask.any():
            continue
        centre, axes, _ = principal_axes(mask)
        to_source = axes @ np.diag(1.0 / np.asarray(factors)) @ axes.T
        reach = np.abs(np.argwhere(mask) - centre).max(axis=0) * max(*factors, 1.0) + 2
        low = np.maximum(np.floor(centre - reach), 0).astype(int)
        high = np.minimum(np.ceil(centre + reach) + 1, class_map.shape).astype(int)
        grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(low, high, strict=True)), indexing="ij"))
        source = np.tensordot(to_source, grid - centre[:, None, None], axes=1) + centre[:, None, None]
        inside = ndimage.map_coordinates(mask.astype(np.float32), source, order=1) >= 0.5
        out[low[0]:high[0], low[1]:high[1]][inside] = k
    return out


def image_features(image: np.ndarray) -> np.ndarray:
    """17 global statistics of an ``R x C`` 8-bit radiograph: log height, width and aspect; the 1, 5, 25, 50, 75,
    95, 99 % intensity percentiles; mean gradient, Laplacian variance, noise (rms off a 3 x 3 median); the
    fractions at <= 2 and >= 253; mean and standard deviation."""
    image = image.astype(np.float32)
    rows, cols = image.shape
    return np.array([
        np.log(rows), np.log(cols), np.log(rows / cols), *np.percentile(image, [1, 5, 25, 50, 75, 95, 99]),
        np.hypot(*np.gradient(image)).mean(), ndimage.laplace(image).var(),
        (image - ndimage.median_filter(image, 3)).std(), (image <= 2).mean(), (image >= 253).mean(),
        image.mean(), image.std(),
    ])


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> Callable[[np.ndarray], np.ndarray]:
    """L2-penalised logistic regression on standardised features; returns ``x -> P(y = 1)``."""
    mean, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / sd

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        logit = z @ w[1:] + w[0]
        residual = 1.0 / (1.0 + np.exp(-logit)) - y
        value = float(np.mean(np.logaddexp(0.0, logit) - y * logit) + l2 * (w[1:] ** 2).sum())
        return value, np.r_[residual.mean(), z.T @ residual / y.size + 2 * l2 * w[1:]]

    w = optimize.minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B").x
    return lambda new: 1.0 / (1.0 + np.exp(-(((new - mean) / sd) @ w[1:] + w[0])))


def group_factors(ratios: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Group -> the factors (width, height) that take the cascade's vertebrae to the group's: 1 / median ratio."""
    return {g: 1.0 / np.median(r, axis=0) for g, r in ratios.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-json", default="data/aasce/dataset.json")
    parser.add_argument("--cases-tsv", default="../shared/data/aasce/cases.tsv")
    parser.add_argument("--eval-dir", default="out/eval", help="make evaluate's output for --fold")
    parser.add_argument("--fit-eval-dir", default="out/eval-fold1", help="make evaluate's output for a training fold")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--l2", type=float, default=0.1)
    args = parser.parse_args(argv)
    root = Path(args.dataset_json).parent
    meta = read_dataset_json(args.dataset_json)
    num = len(meta["labels"]) - 1
    groups = source_groups(args.cases_tsv)
    cases = meta["training"]
    names = sorted(set(groups.values()))
    labels = {c["id"]: read_nifti(root / c["label"]).astype(np.uint8) for c in tqdm(cases, desc="labels")}

    def ratios_by_group(eval_dir: str) -> dict[str, np.ndarray]:
        preds = {p.name.removesuffix("_seg.nii.gz"): p for p in Path(eval_dir, "pred").glob("*_seg.nii.gz")}
        if not preds:
            sys.exit(f"{eval_dir}/pred: no predictions; run make evaluate with EVAL_OUT={eval_dir} first")
        found = {g: [] for g in names}
        for cid, path in preds.items():
            found[groups[cid]].append(size_ratios(read_nifti(path).astype(np.uint8), labels[cid], num))
        return {g: np.concatenate(r) for g, r in found.items()}

    fitted = group_factors(ratios_by_group(args.fit_eval_dir))
    for title, eval_dir in (("training fold (factors)", args.fit_eval_dir), ("evaluation fold", args.eval_dir)):
        print(f"cascade / expert vertebra size, {title} {eval_dir}:")
        for g, r in ratios_by_group(eval_dir).items():
            q = np.percentile(r, [25, 50, 75], axis=0)
            print(f"  {g}: {len(r)} vertebrae; width {q[1, 0]:.3f} (quartiles {q[0, 0]:.3f}-{q[2, 0]:.3f}), "
                  f"height {q[1, 1]:.3f} ({q[0, 1]:.3f}-{q[2, 1]:.3f})")

    x = np.stack([image_features(read_nifti(root / c["image"])) for c in tqdm(cases, desc="image features")])
    y = np.array([groups[c["id"]] == names[-1] for c in cases], dtype=np.float64)
    folds = np.array([c["fold"] for c in cases])
    train, held = folds != args.fold, folds == args.fold
    cv = [np.mean((fit_logistic(x[train & (folds != k)], y[train & (folds != k)], args.l2)(x[folds == k]) > 0.5)
                  == y[folds == k]) for k in sorted(set(folds[train]))]
    prob = fit_logistic(x[train], y[train], args.l2)(x[held])
    print(f"group from the image ({names[-1]} vs {names[0]}, logistic regression, l2 {args.l2}): accuracy "
          f"{np.mean(cv):.3f} over the training folds (cross-validated, {min(cv):.3f}-{max(cv):.3f}), "
          f"{np.mean((prob > 0.5) == y[held]):.3f} on fold {args.fold}")

    log_f = {g: np.log(f) for g, f in fitted.items()}
    print("factors (width, height) from the training fold: "
          + ", ".join(f"{g} {f[0]:.3f}, {f[1]:.3f}" for g, f in fitted.items()))
    held_cases = [c["id"] for c, h in zip(cases, held, strict=True) if h]
    one_size = {f"all at {g}'s size": fitted[g] for g in names}
    scores = {"as predicted": [], "group known": [], "group from the image": [], **{name: [] for name in one_size}}
    for cid, p in tqdm(list(zip(held_cases, prob, strict=True)), desc="scaled"):
        pred, label = read_nifti(Path(args.eval_dir, "pred", f"{cid}_seg.nii.gz")).astype(np.uint8), labels[cid]
        guessed = np.exp(p * log_f[names[-1]] + (1 - p) * log_f[names[0]])
        for name, factors in (("as predicted", (1.0, 1.0)), ("group from the image", guessed), *one_size.items()):
            scores[name].append(mean_dice(scale_vertebrae(pred, tuple(factors), num), label, num))
        scores["group known"].append(scores[f"all at {groups[cid]}'s size"][-1])  # the same factors, scored once
    base = np.array(scores["as predicted"])
    drawn = base > MIN_DICE
    print(f"fold {args.fold}, mean Dice over {base.size} cases "
          f"(over the {drawn.sum()} the cascade scores > {MIN_DICE}):")
    for name, s in scores.items():
        s = np.array(s)
        line = f"  {name}: {s.mean():.4f} ({s[drawn].mean():.4f})"
        if name != "as predicted":
            line += f"; against as predicted: {paired_difference(s, base)}"
        print(line)
    held_groups = np.array([groups[cid] for cid in held_cases])
    for g in names:
        in_group = held_groups == g
        print(f"  {g} ({in_group.sum()} cases, {(in_group & drawn).sum()} over {MIN_DICE}): "
              + ", ".join(f"{name} {np.array(s)[in_group].mean():.4f} ({np.array(s)[in_group & drawn].mean():.4f})"
                          for name, s in scores.items()))
    for g, name in zip(names, one_size, strict=True):
        change = np.array(scores[name]) - base
        gain, loss = change[held_groups == g].mean(), -change[held_groups != g].mean()
        if gain > 0 and loss > 0:
            print(f"  {name} beats as predicted on a set where more than {loss / (gain + loss):.0%} of the cases are "
                  f"drawn in {g}'s style (+{gain:.4f} on them, -{loss:.4f} on the others)")
        else:
            print(f"  {name}: no share of {g}'s cases to break even at ({gain:+.4f} on them, {-loss:+.4f} on the "
                  "others)")


if __name__ == "__main__":
    main()
