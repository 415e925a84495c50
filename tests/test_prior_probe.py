"""tools/prior_probe.py: a model fine-tuned briefly on the other slices of a scan, or on heads made to look like it."""
import importlib
import os

import nibabel as nib
import numpy as np
import pytest

from conftest import area_downsample
from tensorflow_env import keras

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.syspath_prepend(TOOLS)
    return importlib.import_module("prior_probe")


def write_volume(path, depth=7):
    """Axial slices k filled with k + 1 (so each slice names itself), 16x16."""
    data = np.stack([np.full((16, 16), k + 1.0, np.float32) for k in range(depth)], axis=2)
    data[0, 0, :] = 0.0  # a dark corner: each slice scales by its own maximum
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return data


def test_slices_leave_out_the_held_out_slice_and_its_gap(tmp_path, probe):
    write_volume(tmp_path / "scan.nii.gz")
    kept = probe.volume_slices(str(tmp_path / "scan.nii.gz"), held_out=3, gap=1)
    assert len(kept) == 4  # 0, 1, 5, 6
    assert all(plane.max() == 1.0 and plane.shape == (16, 16) for plane in kept)  # scaled as proxy_check scales
    assert len(probe.volume_slices(str(tmp_path / "scan.nii.gz"), held_out=0, gap=0)) == 6


def test_training_pairs_are_the_proxys_degradation(probe):
    rng = np.random.default_rng(0)
    plane = np.random.default_rng(1).random((70, 90))
    inputs, targets = probe.training_pair([plane], rng)
    assert inputs.shape == (16, 16, 16, 1) and targets.shape == (16, 64, 64, 1)
    expected = np.round(area_downsample(targets[3, ..., 0].astype(np.float64)) * 255) / 255
    assert np.abs(inputs[3, ..., 0] - expected).max() < 1e-6
    assert np.all(np.isin(np.round(inputs * 255, 4), np.arange(256)))  # 8-bit inputs


def test_kspace_crop_keeps_the_low_frequencies_at_a_coarser_matrix(probe):
    rows, cols = np.meshgrid(np.arange(64), np.arange(48), indexing="ij")
    plane = 1.0 + 0.5 * np.cos(2 * np.pi * rows / 64)  # one cycle across: survives any crop
    coarse = probe.kspace_cropped(plane, 2.0)
    assert coarse.shape == (32, 24)
    expected = 1.0 + 0.5 * np.cos(2 * np.pi * np.arange(32) / 32)
    assert np.allclose(coarse[:, 5], expected / expected.max(), atol=1e-6)


def test_heads_fine_tune_writes_a_model_that_loads(tmp_path, probe):
    os.makedirs(tmp_path / "tree" / "train")
    head = np.zeros((40, 40, 40), np.float32)
    head[8:32, 8:32, 8:32] = np.random.default_rng(3).random((24, 24, 24)) * 500 + 100
    nib.save(nib.Nifti1Image(head, np.eye(4)), str(tmp_path / "tree" / "train" / "h.nii.gz"))
    out = tmp_path / "m.keras"
    assert probe.main(["heads", "--tree", str(tmp_path / "tree"), "--every", "1", "--average", "1", "2",
                       "--kspace", "2", "--invert", "0.5", "--noise", "0.03", "--steps", "2",
                       "--output", str(out)]) == 0
    model = keras.saving.load_model(str(out), safe_mode=True)
    assert model.output_shape == (None, None, None, 1)


def test_bad_slices_arguments_are_refused_in_one_line(tmp_path, probe):
    write_volume(tmp_path / "scan.nii.gz", depth=3)
    for args, words in ((["--held-out", "5"], "--held-out 5"), (["--held-out", "1", "--gap", "2"], "--gap 2")):
        with pytest.raises(SystemExit) as stop:
            probe.main(["slices", "--volume", str(tmp_path / "scan.nii.gz"), "--output", str(tmp_path / "m.keras"),
                        *args])
        assert str(stop.value).startswith("error: ") and words in str(stop.value) and "\n" not in str(stop.value)
    with pytest.raises(SystemExit) as stop:
        probe.main(["slices", "--volume", str(tmp_path / "none.nii.gz"), "--held-out", "0",
                    "--output", str(tmp_path / "m.keras")])
    assert "no such file" in str(stop.value)
