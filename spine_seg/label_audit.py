"""Audit of expert label maps: implausible outlines, and where each case puts its levels against the whole set.

``python -m spine_seg.label_audit DATASET_JSON [--eval-dir DIR] [--out CSV]`` reads every training label of an
MSD-style ``dataset.json`` (class maps, 0 background, 1..N vertebrae top to bottom) and reports per case:

- ``flags``: structures missing or out of top-to-bottom order, a vertebra whose area is under
  :data:`spine_seg.anatomy.MIN_AREA_RATIO` of the case's median vertebra (squeezed, or drawn over a neighbour),
  and centroid gaps outside :data:`spine_seg.anatomy.GAP_RANGE` times the case's median gap (a skipped or
  doubled vertebra): the checks of :func:`spine_seg.anatomy.plausibility_problems`;
- ``level_z``: how far the first structure's centroid lies from the set's median position (as a fraction of
  the image height), in units of the case's own vertebra pitch. A case whose |level_z| is near 1 names its
  levels one vertebra away from where the rest of the set would put them, which a model cannot tell apart from
  a naming error unless it counts the vertebrae from the top of the spine.

With ``--eval-dir`` (the output of ``make evaluate``) it also sets the level offset of each evaluated case
against its ``level_z``. Nothing is changed; the CSV is written atomically.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spine_seg.anatomy import geometry_problems, resolve_names, structure_geometry
from spine_seg.atomic import write_text_atomic
from spine_seg.dataset_json import read_dataset_json
from spine_seg.evaluation_table import level_shift
from spine_seg.nifti_io import read_nifti

# |level_z| beyond this puts a case's levels nearer a neighbouring vertebra's usual place than its own.
OFF_PRIOR = 0.5


@dataclass(frozen=True)
class LabelGeometry:
    """One label map: image height (px), centroid row (px) and area (px) of each structure (NaN if absent)."""

    height: int
    rows: np.ndarray
    areas: np.ndarray
    flags: tuple[str, ...]

    @property
    def pitch(self) -> float:
        """Mean centroid distance between neighbouring structures (px); NaN with fewer than two present."""
        present = self.rows[~np.isnan(self.rows)]
        return float((present[-1] - present[0]) / (present.size - 1)) if present.size > 1 else float("nan")


def measure(label: np.ndarray, num_structures: int, names: list[str] | None = None) -> LabelGeometry:
    """Centroids, areas and plausibility flags (:func:`spine_seg.anatomy.plausibility_problems`) of an
    ``R x C`` class map."""
    names = resolve_names(names, num_structures)
    rows, areas = structure_geometry(label, num_structures)
    return LabelGeometry(label.shape[0], rows, areas, tuple(geometry_problems(rows, areas, names)))


def level_z(geometries: list[LabelGeometry]) -> np.ndarray:
    """For each case, (first centroid - the set's median position) / the case's pitch; position = row / height."""
    top = np.array([g.rows[0] / g.height for g in geometries])
    pitch = np.array([g.pitch / g.height for g in geometries])
    return (top - np.nanmedian(top)) / pitch


def audit(dataset_json: str | Path, eval_dir: str | Path | None = None, progress: bool = True) -> tuple[str, str]:
    """Audit every training label of ``dataset_json``; returns (summary text, CSV text)."""
    dataset_json = Path(dataset_json)
    meta = read_dataset_json(dataset_json)
    names = [meta["labels"][str(k)] for k in range(1, len(meta["labels"]))]
    cases = meta["training"]
    preds = {} if eval_dir is None else {
        p.name.removesuffix("_seg.nii.gz"): p for p in (Path(eval_dir) / "pred").glob("*_seg.nii.gz")
    }
    geometries: list[LabelGeometry] = []
    offsets: dict[str, int] = {}
    for case in tqdm(cases, desc="audit", unit="label", disable=not progress):
        label = read_nifti(dataset_json.parent / case["label"]).astype(np.uint8)
        geometries.append(measure(label, len(names), names))
        if case["id"] in preds:
            offsets[case["id"]] = level_shift(read_nifti(preds[case["id"]]).astype(np.uint8), label, len(names))
    z = level_z(geometries)
    csv = ["id,fold,level_z,level_offset,flags"] + [
        f"{c['id']},{c.get('fold', '')},{zi:.3f},{offsets.get(c['id'], '')},\"{'; '.join(g.flags)}\""
        for c, g, zi in zip(cases, geometries, z, strict=True)
    ]
    off = np.abs(z) > OFF_PRIOR
    lines = [
        f"{len(cases)} labels; {sum(bool(g.flags) for g in geometries)} with implausible outlines or order:",
        *[f"  {c['id']}: {'; '.join(g.flags)}" for c, g in zip(cases, geometries, strict=True) if g.flags],
        f"first structure ({names[0]}) at {np.nanmedian([g.rows[0] / g.height for g in geometries]):.3f} of the "
        f"image height (median); spread of level_z: sd {np.nanstd(z):.2f} vertebrae; "
        f"{int(off.sum())} cases ({off.mean():.0%}) more than {OFF_PRIOR} vertebra from the median place",
    ]
    if offsets:
        by_id = {c["id"]: i for i, c in enumerate(cases)}
        wrong = [cid for cid, k in offsets.items() if k != 0]
        right = [cid for cid, k in offsets.items() if k == 0]
        lines.append(
            f"evaluated cases: {sum(off[by_id[c]] for c in wrong)} of the {len(wrong)} with levels named off, and "
            f"{sum(off[by_id[c]] for c in right)} of the {len(right)} named right, have |level_z| > {OFF_PRIOR}"
        )
    return "\n".join(lines), "\n".join(csv) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_json")
    parser.add_argument("--eval-dir", help="output of `make evaluate` (its pred/ folder) to set offsets against")
    parser.add_argument("--out", default="out/label_audit.csv")
    args = parser.parse_args(argv)
    if not Path(args.dataset_json).is_file():
        print(f"{args.dataset_json}: no such dataset.json; run `make convert-data` first", file=sys.stderr)
        return 2
    summary, csv = audit(args.dataset_json, args.eval_dir)
    print(summary)
    write_text_atomic(args.out, csv)
    print(f"per-case audit: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
