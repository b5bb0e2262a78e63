"""Convert DICOM radiographs + ``.mat`` masks into NIfTI pairs and an MSD-style ``dataset.json``.

Output under ``OUT``: ``imagesTr/<id>.nii.gz``, ``labelsTr/<id>.nii.gz`` (uint8 class map, 0 background,
1..N structures in channel order), ``imagesTs/<id>.nii.gz`` and ``dataset.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.cases import DICOM_SUFFIXES, Case, discover
from spine_seg.atomic import write_text_atomic
from spine_seg.dataset_json import read_dataset_json
from spine_seg.dicom_io import read_radiograph
from spine_seg.errors import InputFileError
from spine_seg.label_layout import LAYOUTS, check_layout, detect_layout, num_structures, to_class_map
from spine_seg.mat_io import DEFAULT_KEY, read_mask
from spine_seg.nifti_io import write_nifti

NUM_FOLDS = 5
FOLD_SEED = 0
MAX_WARNINGS_SHOWN = 5


@dataclass(frozen=True)
class Options:
    """Conversion settings; any change invalidates earlier outputs."""

    label_key: str = DEFAULT_KEY
    channels: int = 7
    label_layout: str | None = None  # None: detect per case

    def fingerprint(self) -> str:
        return json.dumps([self.label_key, self.channels, self.label_layout])


@dataclass
class Report:
    """What a conversion run did."""

    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"{'converted':>10} {len(self.converted):6d}",
            f"{'skipped':>10} {len(self.skipped):6d}  (up to date)",
            f"{'bad':>10} {len(self.bad):6d}",
        ]
        lines += [f"  BAD  {msg}" for _, msg in self.bad]
        lines += [f"  WARN {msg}" for msg in self.warnings[:MAX_WARNINGS_SHOWN]]
        if len(self.warnings) > MAX_WARNINGS_SHOWN:
            lines.append(f"  ... and {len(self.warnings) - MAX_WARNINGS_SHOWN} more warnings (see dataset.json)")
        return "\n".join(lines)


def _sha1(*paths: Path) -> str:
    digest = hashlib.sha1()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _outputs(case: Case, out: Path) -> list[Path]:
    if case.mask is None:
        return [out / "imagesTs" / f"{case.case_id}.nii.gz"]
    return [out / "imagesTr" / f"{case.case_id}.nii.gz", out / "labelsTr" / f"{case.case_id}.nii.gz"]


def convert_case(case: Case, out: Path, options: Options) -> dict[str, Any]:
    """Convert one case; returns its dataset.json record. Raises :class:`InputFileError` on bad input."""
    radiograph = read_radiograph(case.image)
    shape = list(radiograph.pixels.shape)
    record: dict[str, Any] = {
        "id": case.case_id,
        "image": str(_outputs(case, out)[0].relative_to(out)),
        "shape": shape,
        "spacing": list(radiograph.spacing),
        "spacing_source": radiograph.spacing_source,
        "source": {"image": str(case.image)},
        "warnings": list(radiograph.warnings),
    }
    class_map = None
    if case.mask is not None:
        mask = read_mask(case.mask, options.label_key)
        if list(mask.shape[:2]) != shape:
            rows, cols = mask.shape[:2]
            raise InputFileError(case.mask, f"mask is {rows}x{cols} but image is {shape[0]}x{shape[1]}")
        if mask.shape[2] != options.channels:
            raise InputFileError(case.mask, f"mask has {mask.shape[2]} channels, expected {options.channels}")
        if options.label_layout is None:
            try:
                layout = detect_layout(mask)
            except ValueError as err:
                raise InputFileError(case.mask, str(err)) from err
        else:
            layout = options.label_layout
            reason = check_layout(mask, layout)
            if reason is not None:
                raise InputFileError(case.mask, f"not in layout {layout}: {reason}")
        class_map = to_class_map(mask, layout)
        counts = np.bincount(class_map.ravel(), minlength=num_structures(layout, mask.shape[2]) + 1)
        record["warnings"] += [
            f"{case.mask.name}: structure {k} is empty" for k in range(1, len(counts)) if counts[k] == 0
        ]
        record.update(label=str(_outputs(case, out)[1].relative_to(out)), label_layout=layout)
        record["source"]["label"] = str(case.mask)
    write_nifti(out / record["image"], radiograph.pixels, radiograph.spacing)
    if class_map is not None:
        try:
            write_nifti(out / record["label"], class_map, radiograph.spacing)
        except Exception:
            (out / record["image"]).unlink(missing_ok=True)  # no image without its label
            raise
    sources = [case.image] + ([case.mask] if case.mask else [])
    record["sha1"] = _sha1(*sources)
    record["options"] = options.fingerprint()
    return record


def check_structure_names(names: list[str] | None, layouts: Sequence[str], channels: int) -> None:
    """Raise ValueError unless ``names`` (if given) has one name per structure of ``channels``-channel masks in
    one of ``layouts``."""
    counts = sorted({num_structures(layout, channels) for layout in layouts})
    if names is not None and len(names) not in counts:
        raise ValueError(
            f"{len(names)} structure names given for {' or '.join(map(str, counts))} structures "
            f"({channels}-channel masks): {', '.join(names)}"
        )


def _up_to_date(case: Case, out: Path, previous: dict[str, dict], options: Options) -> bool:
    old = previous.get(case.case_id)
    if old is None or old.get("options") != options.fingerprint():
        return False
    if not all(p.is_file() for p in _outputs(case, out)):
        return False
    return old.get("sha1") == _sha1(case.image, *([case.mask] if case.mask else []))


def _safe_convert(case: Case, out: Path, options: Options) -> tuple[Case, dict | None, str | None]:
    try:
        return case, convert_case(case, out, options), None
    except InputFileError as err:
        return case, None, str(err)
    except Exception as err:  # noqa: BLE001 - one bad case must not stop the batch
        return case, None, f"{case.image}: unexpected error ({type(err).__name__}: {err})"


def assign_folds(
    case_ids: list[str], num_folds: int = NUM_FOLDS, seed: int = FOLD_SEED, keep: dict[str, int] | None = None
) -> dict[str, int]:
    """Deterministic balanced folds. Cases in ``keep`` (case id -> fold, e.g. from an earlier ``dataset.json``)
    stay in their fold; the others, sorted and shuffled with a fixed seed, go one by one to the fold with the
    fewest cases (the lowest on a tie), which deals a fresh set round-robin. Adding cases thus never moves a
    case that already had a fold."""
    present = set(case_ids)
    folds = {i: f for i, f in (keep or {}).items() if i in present and 0 <= f < num_folds}
    sizes = np.bincount(list(folds.values()), minlength=num_folds)
    new = sorted(i for i in case_ids if i not in folds)
    random.Random(seed).shuffle(new)
    for case_id in new:
        fold = int(np.argmin(sizes))
        folds[case_id] = fold
        sizes[fold] += 1
    return {i: folds[i] for i in case_ids}


def _check_same_source(dataset: dict, src: Path, out: Path) -> None:
    """Raise ValueError when ``out``'s ``dataset.json`` records another source folder than ``src``: converting
    into it would mix two data sets (cases of one id replacing each other). Conversions written before
    ``source`` was recorded are not checked."""
    source = dataset.get("source")
    if source is not None and Path(source) != src.resolve():
        raise ValueError(
            f"{out} holds a conversion of {source}; converting {src} into it would mix two data sets: give another "
            "output folder, or --new-source if it is a new copy of the same data set"
        )


def convert(
    src: str | Path,
    out: str | Path,
    options: Options = Options(),
    structure_names: list[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    new_source: bool = False,
) -> Report:
    """Convert every case under ``src`` into ``out``; bad cases are reported, never fatal. ``out`` may hold an
    earlier conversion of ``src`` (only new and changed cases are converted again), or of another folder only
    with ``new_source`` (a new copy of the same data set: its cases replace those of the same id)."""
    src, out = Path(src), Path(out)
    layouts = [options.label_layout] if options.label_layout else LAYOUTS
    check_structure_names(structure_names, layouts, options.channels)
    found = discover(src)
    if not (found.training or found.test or found.bad):
        raise FileNotFoundError(
            f"{src}: no DICOM files ({', '.join(DICOM_SUFFIXES)}) in train/img, test/img or the folder itself"
        )
    report = Report(bad=[(str(p), f"{p}: {cause}") for p, cause in found.bad])
    dataset_json = out / "dataset.json"
    previous: dict[str, dict] = {}
    if dataset_json.is_file():
        old = read_dataset_json(dataset_json)
        if not new_source:
            _check_same_source(old, src, out)
        previous = {r["id"]: r for r in old.get("training", []) + old.get("test", [])}
    records: dict[str, dict] = {}
    todo = []
    for case in found.training + found.test:
        if _up_to_date(case, out, previous, options):
            records[case.case_id] = previous[case.case_id]
            report.skipped.append(case.case_id)
        else:
            todo.append(case)
    bar = tqdm(total=len(todo), desc="convert", unit="img", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_safe_convert, c, out, options): c for c in todo}
            results = []
            for fut in as_completed(futures):
                try:
                    results.append(fut.result())
                except BrokenProcessPool:  # a worker was killed (out of memory?): its case and the unfinished ones
                    case = futures[fut]
                    results.append((case, None, f"{case.image}: not converted: a worker process died (out of "
                                                "memory?); run the conversion again, or with --workers 1"))
                bar.update()
    else:
        results = []
        for case in todo:
            results.append(_safe_convert(case, out, options))
            bar.update()
    bar.close()
    results.sort(key=lambda result: result[0].case_id)  # completion order varies with workers > 1
    for case, record, error in results:
        if error is not None:
            report.bad.append((str(case.image), error))
        else:
            records[case.case_id] = record
            report.converted.append(case.case_id)
    training = sorted((r for r in records.values() if "label" in r), key=lambda r: r["id"])
    test = sorted((r for r in records.values() if "label" not in r), key=lambda r: r["id"])
    layouts = Counter(r["label_layout"] for r in training)
    layout = options.label_layout or (layouts.most_common(1)[0][0] if layouts else None)
    for r in training:
        if r["label_layout"] != layout:
            report.warnings.append(f"{r['id']}: label layout {r['label_layout']} differs from the dataset's {layout}")
    earlier = {i: r["fold"] for i, r in previous.items() if isinstance(r.get("fold"), int)}
    folds = assign_folds([r["id"] for r in training], keep=earlier)
    for r in training:
        r["fold"] = folds[r["id"]]
    report.warnings += [w for r in training + test for w in r["warnings"]]
    n = num_structures(layout, options.channels) if layout else options.channels - 1
    check_structure_names(structure_names, [layout] if layout else LAYOUTS, options.channels)
    names = structure_names or [f"structure_{k}" for k in range(1, n + 1)]
    dataset = {
        "name": src.name,
        "description": f"Converted from {src} by data_prep",
        "source": str(src.resolve()),
        "tensorImageSize": "2D",
        "modality": {"0": "X-ray"},
        "labels": {"0": "background", **{str(k): name for k, name in enumerate(names, start=1)}},
        "label_key": options.label_key,
        "label_channels": options.channels,
        "label_layout": layout,
        "numTraining": len(training),
        "numTest": len(test),
        "num_folds": NUM_FOLDS,
        "warnings": report.warnings,
        "bad": [msg for _, msg in report.bad],
        "training": training,
        "test": test,
    }
    if records or not dataset_json.is_file():
        write_text_atomic(dataset_json, json.dumps(dataset, indent=1) + "\n")
    return report
