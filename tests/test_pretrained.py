"""The committed pretrained model: loads safely, is used by default, and beats bicubic on unseen slices."""
import json
import os

import numpy as np
from PIL import Image

import constants
import inference
from conftest import ROOT, run_script


def test_pretrained_model_is_shipped_and_loads_with_safe_mode():
    path = os.path.join(ROOT, constants.PRETRAINED_MODEL)
    model = inference.load_model(path)
    assert model.count_params() < 100_000
    # served with "valid" padding: the input's margin of the receptive radius (5) is trimmed
    assert model(np.zeros((1, 18, 18, 1), np.float32)).shape == (1, 32, 32, 1)


def test_predict_falls_back_to_the_pretrained_model_and_says_so(tmp_path):
    Image.fromarray(np.tile(np.arange(0, 240, 15, dtype=np.uint8), (16, 1))).save(tmp_path / "lr.png")
    result = run_script("predict.py", "--input", str(tmp_path / "lr.png"), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pretrained" in result.stdout and constants.PRETRAINED_MODEL in result.stdout
    with Image.open(tmp_path / "out" / "lr_x4.png") as out:
        assert out.size == (64, 64)


def test_pretrained_model_beats_bicubic_on_the_held_out_template_slab(tmp_path):
    """The embedded test split: axial slices of a slab no training slice touches."""
    import dataset

    data = str(tmp_path / "AD_NC")
    dataset.build_sample_dataset(data)
    result = run_script("predict.py", "--data-dir", data, "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "out" / "evaluation.json") as f:
        summary = json.load(f)
    assert summary["n_images"] >= 20
    assert summary["model_psnr"] - summary["bicubic_psnr"] >= 3.0, summary
    assert summary["model_ssim"] > summary["bicubic_ssim"], summary
