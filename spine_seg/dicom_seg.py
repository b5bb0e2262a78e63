"""Write a predicted class map as a DICOM Segmentation (highdicom) that references its source radiograph.

One BINARY segment per structure, labelled with the structure's name and coded with SNOMED CT: the specific
vertebra (``T12 vertebra``, ``L1 vertebra``, ...) when the name is one, else ``Vertebra``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from spine_seg import __version__
from spine_seg.atomic import atomic_path

# Type 2 attributes (present, possibly empty) that highdicom copies from the source image. Challenge DICOMs
# (e.g. AASCE) leave them out; an empty value is DICOM's "unknown", so they are added empty to a copy.
_TYPE2_FROM_SOURCE = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
    "StudyTime", "ReferringPhysicianName",
)
SEG_SERIES_NUMBER = 300


def property_type(name: str) -> Code:
    """SNOMED CT code of structure ``name``: ``codes.SCT.<name>Vertebra`` (e.g. ``L1 vertebra``), else ``Vertebra``."""
    return getattr(codes.SCT, f"{name.upper()}Vertebra", codes.SCT.Vertebra)


def segment_descriptions(names: Sequence[str]) -> list[hd.seg.SegmentDescription]:
    """Segment ``k`` (1-based) is structure ``names[k - 1]``, found automatically by the spine-seg network."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name="spine-seg", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=property_type(name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(names, start=1)
    ]


def read_source(path: str | Path) -> pydicom.Dataset:
    """The source radiograph's header (no pixel data) prepared for highdicom.

    Missing Type 2 attributes are added empty. Without a Frame of Reference (projection radiographs) the
    PixelSpacing is left out: highdicom would copy it into a Pixel Measures item without Slice Thickness, which
    DICOM allows there but highdicom's own reader (``segread``) refuses; the SEG is on the source's pixel grid,
    and the source it references keeps the spacing.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if "FrameOfReferenceUID" not in ds and "PixelSpacing" in ds:
        del ds.PixelSpacing
    return ds


def make_segmentation(source: pydicom.Dataset, class_map: np.ndarray, names: Sequence[str]) -> hd.seg.Segmentation:
    """A BINARY Segmentation of ``source`` with segment ``k`` = ``class_map == k`` for ``k = 1..len(names)``."""
    shape = (int(source.Rows), int(source.Columns))
    if class_map.shape != shape:
        raise ValueError(f"class map is {class_map.shape} but the source image is {shape}")
    if class_map.size and int(class_map.max()) > len(names):
        raise ValueError(f"class map has label {int(class_map.max())} but only {len(names)} structure names")
    masks = np.stack([class_map == k for k in range(1, len(names) + 1)], axis=-1)[None]
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(names),
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="spine-seg",
        manufacturer_model_name="spine-seg BasicUNet",
        software_versions=__version__,
        device_serial_number="none",
        series_description="spine-seg vertebra segmentation",
    )


def write_dicom_seg(
    path: str | Path, source_path: str | Path, class_map: np.ndarray, names: Sequence[str]
) -> Path:
    """Write the Segmentation of ``class_map`` over the DICOM at ``source_path`` to ``path`` atomically."""
    seg = make_segmentation(read_source(source_path), class_map, names)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
