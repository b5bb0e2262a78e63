"""DICOM Segmentation output: segments, labels, codes and references, read back with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from spine_seg.dicom_seg import _TYPE2_FROM_SOURCE, make_segmentation, read_source, write_dicom_seg
from spine_seg.label_layout import structure_slice
from spine_seg.phantom import make_phantom, write_dicom

NAMES = ["T12", "L1", "L2", "L3", "L4", "L5"]


def _segment_masks(seg_path: Path, source: pydicom.Dataset) -> np.ndarray:
    """``R x C x S`` bool masks of every segment (empty ones included) of the SEG at ``seg_path``."""
    seg = hd.seg.segread(seg_path)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False, segment_numbers=list(range(1, 7))
    )
    return pixels[0].astype(bool)


def test_predict_dicom_seg_matches_the_npy(onnx_predicted: tuple[Path, Path]) -> None:
    raw, out = onnx_predicted
    channels = structure_slice("background-last", 7)
    for source_path in sorted((raw / "test" / "img").glob("*.dcm")):
        source = pydicom.dcmread(source_path)
        seg_path = out / f"{source_path.stem}_seg.dcm"
        seg = hd.seg.segread(seg_path)
        assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
        assert [s.SegmentLabel for s in seg.SegmentSequence] == NAMES
        assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.L1Vertebra.value
        assert seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
        assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (seg.StudyInstanceUID, seg.PatientID) == (source.StudyInstanceUID, source.PatientID)
        expected = np.load(out / f"{source_path.stem}.npy")[..., channels].astype(bool)
        assert expected.any(), "the random model must predict some structure for the comparison to mean anything"
        np.testing.assert_array_equal(_segment_masks(seg_path, source), expected)


def test_source_without_type2_attributes(tmp_path: Path) -> None:
    """Challenge DICOMs lack PatientBirthDate, StudyDate, ...: the SEG gets them empty; the masks are exact."""
    image, class_map = make_phantom((90, 60), seed=3)
    source_path = write_dicom(tmp_path / "src.dcm", image, spacing=(0.5, 0.5))
    ds = pydicom.dcmread(source_path)
    for keyword in _TYPE2_FROM_SOURCE[2:]:  # keep PatientID/PatientName, like the AASCE files
        delattr(ds, keyword)
    ds.save_as(source_path)
    seg_path = write_dicom_seg(tmp_path / "src_seg.dcm", source_path, class_map, NAMES)
    seg = pydicom.dcmread(seg_path)
    assert seg.PatientBirthDate == "" and seg.StudyDate == "" and seg.PatientID == ds.PatientID
    # no Frame of Reference: no Pixel Measures item, which highdicom's reader would refuse without Slice Thickness
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    masks = _segment_masks(seg_path, ds)
    for k in range(1, 7):
        assert masks[..., k - 1].any()
        np.testing.assert_array_equal(masks[..., k - 1], class_map == k)


def test_bad_class_maps_are_refused(tmp_path: Path) -> None:
    image, class_map = make_phantom((90, 60), seed=4)
    source = read_source(write_dicom(tmp_path / "src.dcm", image))
    with pytest.raises(ValueError, match=r"class map is \(89, 60\) but the source image is \(90, 60\)"):
        make_segmentation(source, class_map[1:], NAMES)
    with pytest.raises(ValueError, match="class map has label 6 but only 5 structure names"):
        make_segmentation(source, class_map, NAMES[:5])
