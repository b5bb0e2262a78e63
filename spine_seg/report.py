"""README-ready training report: learning curves, per-vertebra table and best/median/worst overlays.

``python -m spine_seg.report --eval-dir out/eval --run-dir RUN/fine [--refine-run-dir RUN/refine] --dataset-json D
--out docs/figures``: stage 2's learning curve (``learning_curve.png``), stage 3's where its run folder is given
(``learning_curve_refine.png``). ``--skip-missing-curves`` keeps a curve as it is where its run folder holds no
training log (the runs were made on another machine), and says so.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from spine_seg.atomic import atomic_path, write_text_atomic  # noqa: E402
from spine_seg.errors import InputFileError, run_reporting_errors  # noqa: E402
from spine_seg.evaluation_table import read_raw, table  # noqa: E402
from spine_seg.nifti_io import read_nifti  # noqa: E402
from spine_seg.overlay import overlay_rgb  # noqa: E402


def scalars(run_dir: str | Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a TensorBoard scalar over every event file in ``run_dir``, by step."""
    files = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    if not files:
        raise InputFileError(run_dir, "no training log (TensorBoard event files) here: train with `make train` "
                                      "first (RUN_DIR= names its folder)")
    points: dict[int, float] = {}
    for events in files:
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            points.update({e.step: e.value for e in acc.Scalars(tag)})
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps])


def learning_curve(run_dir: str | Path, path: str | Path, iterations_per_epoch: int | None = None,
                   title: str = "Learning curve") -> None:
    """Plot training loss (per epoch, averaged) and validation mean Dice against epochs."""
    it, loss = scalars(run_dir, "train_loss")
    ep, dice = scalars(run_dir, "val_mean_dice")
    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=110)
    if len(it):
        per_epoch = iterations_per_epoch or max(1, int(round(it.max() / max(ep.max() if len(ep) else 1, 1))))
        epochs = (it - 1) // per_epoch + 1
        uniq = np.unique(epochs)
        ax1.plot(uniq, [loss[epochs == e].mean() for e in uniq], color="tab:red", label="train loss (Dice+CE)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss", color="tab:red")
    ax2 = ax1.twinx()
    ax2.plot(ep, dice, "o-", color="tab:blue", markersize=3, label="validation mean Dice")
    ax2.set_ylabel("validation mean Dice (working grid)", color="tab:blue")
    ax2.set_ylim(0, 1)
    ax1.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def case_figure(image: Path, label: Path, pred: Path, title: str, path: str | Path) -> None:
    """Side-by-side overlays: expert mask and prediction on the radiograph."""
    img = read_nifti(image)
    fig, axes = plt.subplots(1, 2, figsize=(6, 6 * img.shape[0] / img.shape[1] / 2 + 0.6), dpi=110)
    for ax, mask, name in zip(axes, (read_nifti(label), read_nifti(pred)), ("expert", "prediction"), strict=True):
        ax.imshow(overlay_rgb(img, mask.astype(np.uint8)))
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval-dir", required=True)
    parser.add_argument("--run-dir", required=True, help="stage 2's training run folder")
    parser.add_argument("--refine-run-dir", help="stage 3's training run folder")
    parser.add_argument("--skip-missing-curves", action="store_true",
                        help="keep a learning curve as it is where its run folder holds no training log")
    parser.add_argument("--dataset-json", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return run_reporting_errors(lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    out, eval_dir = Path(args.out), Path(args.eval_dir)
    text, _ = table(eval_dir, args.dataset_json)
    curves = {"learning_curve": (args.run_dir, "Learning curve, stage 2")}
    if args.refine_run_dir:
        curves["learning_curve_refine"] = (args.refine_run_dir, "Learning curve, stage 3 (per-vertebra windows)")
    for name, (run_dir, title) in curves.items():
        try:
            learning_curve(run_dir, out / f"{name}.png", title=title)
        except InputFileError as err:
            if not args.skip_missing_curves:
                raise
            print(f"note: {err}; {out / name}.png kept as it is")
    files, _, dice = read_raw(eval_dir / "val_mean_dice_raw.csv")
    with warnings.catch_warnings():  # a case without any scored vertebra has no mean, and is not picked
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(dice, axis=1)
    order = [i for i in np.argsort(means) if not np.isnan(means[i])]
    if not order:
        raise ValueError(f"{eval_dir / 'val_mean_dice_raw.csv'}: no case has a Dice score")
    picks = {"worst": order[0], "median": order[len(order) // 2], "best": order[-1]}
    data_dir = Path(args.dataset_json).parent
    lines = ["# Fold-0 validation report", "", text, ""]
    lines += [f"![{title}]({name}.png)" for name, (_, title) in curves.items()] + [""]
    for name, idx in picks.items():
        image = Path(files[idx])
        cid = image.name.removesuffix(".nii.gz")
        pred = eval_dir / "pred" / f"{cid}_seg.nii.gz"
        fig_path = out / f"case_{name}.png"
        title = f"{name}: case {cid}, mean Dice {np.nanmean(dice[idx]):.3f}"
        case_figure(image, data_dir / "labelsTr" / f"{cid}.nii.gz", pred, title, fig_path)
        lines.append(f"![{title}]({fig_path.name})")
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report written to {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
