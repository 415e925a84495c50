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


def test_philips_dwi_slices_group_into_volumes_by_b_value_and_gradient_numbers(contrast_slices, tmp_path):
    """Classic gzip-compressed slices, stored shuffled: each (2005,1412), (2005,1413) pair is one volume, its
    slices in order along the normal, the rescale applied; files with no pixels are passed over."""
    import gzip
    import io

    import pydicom
    from test_dicom import AXIAL, slice_dataset, slice_positions

    rng = np.random.default_rng(7)
    volumes_by_key = {(1, 1): rng.integers(0, 900, (4, 6, 5)), (2, 3): rng.integers(0, 900, (4, 6, 5))}
    folder = tmp_path / "In" / "cl" / "DICOM"
    folder.mkdir(parents=True)
    files = []
    for (b, g), volume in volumes_by_key.items():
        for k, position in enumerate(slice_positions(4, orientation=AXIAL)):
            ds = slice_dataset(volume[k].astype(np.int16), position, RescaleSlope=2.0, RescaleIntercept=1.0)
            ds.add_new((0x2005, 0x1412), "IS", str(b))
            ds.add_new((0x2005, 0x1413), "IS", str(g))
            files.append(ds)
    for n, k in enumerate(rng.permutation(len(files))):
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, files[k], enforce_file_format=True)
        (folder / f"IM_{n:04d}.gz").write_bytes(gzip.compress(buffer.getvalue()))
    empty = io.BytesIO()
    pydicom.dcmwrite(empty, pydicom.Dataset(), implicit_vr=True, little_endian=True)
    (folder / "PS_9999.gz").write_bytes(gzip.compress(empty.getvalue()))
    found = dict(contrast_slices.philips_dwi_volumes(contrast_slices.Source(str(tmp_path), mirror=False)))
    assert sorted(found) == ["philipsdwi_b1_g1", "philipsdwi_b2_g3"]
    for (b, g), volume in volumes_by_key.items():
        np.testing.assert_allclose(found[f"philipsdwi_b{b}_g{g}"], volume * 2.0 + 1.0)
