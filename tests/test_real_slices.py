"""tools/real_slices.py: the real heads' slices as an image tree, at their own voxel size or coarsened."""
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import import_tool
from scans import volumes


@pytest.fixture
def real_slices(monkeypatch):
    return import_tool(monkeypatch, "real_slices")


def write_heads(tree):
    """One training and one validation head of random voxels: {split: volume}."""
    heads = {}
    for split, seed in (("train", 1), ("validation", 2)):
        os.makedirs(tree / split)
        data = np.random.default_rng(seed).random((13, 10, 8)).astype(np.float32) * 900
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tree / split / f"head_{split}.nii.gz"))
        heads[split] = data
    return heads


def test_coarsen_writes_each_head_averaged_over_blocks_of_voxels(tmp_path, real_slices):
    heads = write_heads(tmp_path / "volumes")
    out = tmp_path / "tree"
    assert real_slices.main(["--volumes", str(tmp_path / "volumes"), "--output-dir", str(out), "--coarsen", "2",
                             "--step", "1", "--min-tissue", "0"]) == 0
    names = sorted(os.listdir(out / "train" / "heads"))
    assert len(names) == 6 + 5 + 4 and all(name.startswith("head-train-coarse2_") for name in names)
    blocks = heads["train"][:12].reshape(6, 2, 5, 2, 4, 2).mean(axis=(1, 3, 5))  # the 13th row is dropped
    low, high = volumes.robust_range(blocks)
    expected = np.round(np.clip((blocks[:, 3] - low) / (high - low), 0, 1) * 255)
    written = np.asarray(Image.open(out / "train" / "heads" / "head-train-coarse2_y003.png"), np.float64)
    assert written.shape == (6, 4) and np.abs(written - expected).max() <= 1  # float32 sums may round the other way
    held_out = sorted(os.listdir(out / "validation" / "heads"))
    assert len(held_out) == 15 and all(name.startswith("head-validation-coarse2_") for name in held_out)
    assert sorted(os.listdir(out / "test" / "heads")) == held_out


def test_without_coarsen_the_slices_keep_the_heads_voxels(tmp_path, real_slices):
    write_heads(tmp_path / "volumes")
    assert real_slices.main(["--volumes", str(tmp_path / "volumes"), "--output-dir", str(tmp_path / "tree"),
                             "--step", "1", "--min-tissue", "0"]) == 0
    names = sorted(os.listdir(tmp_path / "tree" / "train" / "heads"))
    assert len(names) == 13 + 10 + 8 and names[0] == "head-train_x000.png"


def test_coarsen_below_one_or_beyond_a_head_is_refused_in_one_line(tmp_path, real_slices, capsys):
    write_heads(tmp_path / "volumes")
    with pytest.raises(SystemExit) as stop:
        real_slices.main(["--volumes", str(tmp_path / "volumes"), "--coarsen", "0"])
    assert stop.value.code != 0 and "--coarsen" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="at least --coarsen 9 voxels a side"):  # the heads are 13x10x8
        real_slices.main(["--volumes", str(tmp_path / "volumes"), "--output-dir", str(tmp_path / "tree"),
                          "--coarsen", "9"])
