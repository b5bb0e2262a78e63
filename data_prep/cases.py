"""Find the cases in a raw folder: ``train/img/*.dcm`` + ``train/label/*.mat`` and ``test/img/*.dcm``,
or a flat folder of ``.dcm`` files, each with a matching ``.mat`` when it is a training case."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class Case:
    """One radiograph: ``mask`` is None for a test case."""

    case_id: str
    image: Path
    mask: Path | None


@dataclass
class Discovery:
    """Cases found, and files that cannot form a case (path, cause)."""

    training: list[Case]
    test: list[Case]
    bad: list[tuple[Path, str]]


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files (by suffix, any case) directly in ``folder``, sorted; none if it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DICOM_SUFFIXES)


def _mats(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Case id -> ``.mat`` file in ``folder``, and the ids with more than one (``001.mat`` and ``001.MAT``)."""
    by_id: dict[str, list[Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() == ".mat":
                by_id.setdefault(p.stem, []).append(p)
    return {i: ps[0] for i, ps in by_id.items() if len(ps) == 1}, {i: ps for i, ps in by_id.items() if len(ps) > 1}


def _ambiguous(images: list[Path], twins: dict[str, list[Path]]) -> list[tuple[Path, str]]:
    """A bad entry for each image whose case has more than one label file, and for those files."""
    bad = [
        (image, f"{len(twins[image.stem])} labels for this case ({', '.join(p.name for p in twins[image.stem])}); "
                "none used") for image in images if image.stem in twins
    ]
    return bad + [(p, "another label has the same case id; none used") for ps in twins.values() for p in ps]


def discover(root: str | Path) -> Discovery:
    """List the cases under ``root``; ids are file stems and must be unique across training and test."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder; give the folder that holds the radiographs")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder does not exist")
    bad: list[tuple[Path, str]] = []
    training: list[Case] = []
    test: list[Case] = []
    if (root / "train").is_dir() or (root / "test").is_dir():
        masks, twins = _mats(root / "train" / "label")
        images = dicom_files(root / "train" / "img")
        bad += _ambiguous(images, twins)
        for image in (i for i in images if i.stem not in twins):
            mask = masks.pop(image.stem, None)
            if mask is None:
                bad.append((image, f"training image has no label train/label/{image.stem}.mat"))
            else:
                training.append(Case(image.stem, image, mask))
        bad += [(m, "label has no image in train/img") for m in masks.values()]
        test = [Case(p.stem, p, None) for p in dicom_files(root / "test" / "img")]
    else:
        masks, twins = _mats(root)
        images = dicom_files(root)
        bad += _ambiguous(images, twins)
        for image in (i for i in images if i.stem not in twins):
            mask = masks.pop(image.stem, None)
            (training if mask else test).append(Case(image.stem, image, mask))
        bad += [(m, "label has no image") for m in masks.values()]
    counts = Counter(c.case_id for c in training + test)
    duplicated = {i for i, n in counts.items() if n > 1}
    for case in training + test:
        if case.case_id in duplicated:
            bad.append((case.image, f"duplicate case id {case.case_id!r}"))
    training = [c for c in training if c.case_id not in duplicated]
    test = [c for c in test if c.case_id not in duplicated]
    return Discovery(training, test, bad)
