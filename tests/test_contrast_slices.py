"""tools/contrast_slices.py: a clinical scan's slices in its acquisition plane, on its own robust range."""
import numpy as np
import pytest

from conftest import import_tool
from scans import volumes


@pytest.fixture
def contrast_slices(monkeypatch):
    return import_tool(monkeypatch, "contrast_slices")


def test_slices_lie_across_the_thickest_axis_on_the_scans_robust_range(contrast_slices):
    """A 2D scan of 5 mm slices along axis 1: its slices are (x, z) planes, 8-bit on the 0.5-99.5 percentiles;
    training takes every --step-th slice with tissue, scoring three near the middle."""
    rng = np.random.default_rng(4)
    scan = np.zeros((40, 12, 36), np.float32)
    scan[5:35, 2:10, 4:32] = rng.uniform(100, 900, (30, 8, 28))  # tissue on slices 2-9 only
    zooms = (0.9, 5.0, 0.9)
    taken = contrast_slices.slices_of(scan, zooms, step=2, min_tissue=0.05)
    assert [k for k, _ in taken] == [2, 4, 6, 8]
    low, high = volumes.robust_range(scan)
    expected = np.clip(np.round((scan[:, 4, :] - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    assert all(plane.shape == (40, 36) and plane.dtype == np.uint8 for _, plane in taken)
    np.testing.assert_array_equal(dict(taken)[4], expected)
    middle = contrast_slices.slices_of(scan, zooms, step=1, min_tissue=0.05, middle=3)
    assert [k for k, _ in middle] == [3, 6, 9]


def test_the_phantom_series_and_cross_sectional_scans_are_never_taken(contrast_slices):
    ms = contrast_slices.MS_SCAN
    assert ms.match("longitudinal/raw/patient03/study2_FLAIR.nii.gz").groups() == ("patient03", "study2", "FLAIR")
    assert ms.match("cross_sectional/raw/patient03/FLAIR.nii.gz") is None
    assert ms.match("longitudinal/raw/patient03/study1_T1W.nii.gz") is None
    human = contrast_slices.EPI_HUMAN
    assert human.match("Ref/ax_asc_35sl_6.nii") and human.match("Ref/fMRI_MB_asc_25.nii")
    assert human.match("Ref/noPF_noPAT_noPOS_PEres100_ES0p59_BW2222_AP_8.nii") is None
