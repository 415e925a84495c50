"""Smoke test of the two commands a user runs: train.py, then predict.py."""
import csv
import json
import os

import numpy as np
from PIL import Image

import modules
from conftest import run_script, write_tree
from tensorflow_env import keras


def test_train_then_predict_writes_every_output(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=3)
    out = str(tmp_path / "out")
    result = run_script("train.py", "--data-dir", data, "--output-dir", out, "--epochs", "2", "--batch-size", "4",
                        "--patch-size", "64", "--precision", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas in sync: 1" in result.stdout
    for name in ("espcn.keras", "history.csv", "psnr.png", "loss.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"epoch", "loss", "val_loss", "val_psnr", "val_ssim"} <= set(rows[0])
    assert all(float(r["val_psnr"]) > 5 for r in rows)
    assert not os.path.exists(os.path.join(out, "backup")), "a finished run leaves no backup"
    with Image.open(os.path.join(out, "psnr.png")) as plot:
        assert plot.size[0] > 100

    result = run_script("predict.py", "--data-dir", data, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "freshly trained" in result.stdout
    with open(os.path.join(out, "evaluation.json")) as f:
        summary = json.load(f)
    assert set(summary) == {"n_images", "model_psnr", "bicubic_psnr", "model_ssim", "bicubic_ssim"}
    assert summary["n_images"] == 3
    assert all(np.isfinite(v) for v in summary.values())
    with Image.open(os.path.join(out, "multi_comp_3.png")) as figure:
        assert figure.size[1] > figure.size[0]  # one row per test image


def test_help_lists_every_flag_with_defaults():
    for script, flags in (("train.py", ["--data-dir", "--output-dir", "--batch-size", "--epochs", "--precision",
                                        "--strategy", "--jit", "--target-size", "--patience"]),
                          ("predict.py", ["--data-dir", "--output-dir", "--batch-size", "--model", "--input"])):
        result = run_script(script, "--help")
        assert result.returncode == 0
        for flag in flags:
            assert flag in result.stdout, (script, flag)
        assert "default" in result.stdout


def test_filters_flag_trains_a_wider_or_narrower_espcn_that_predict_uses(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=1)
    out = tmp_path / "out"
    result = run_script("train.py", "--data-dir", data, "--output-dir", str(out), "--epochs", "1", "--batch-size", "2",
                        "--patch-size", "32", "--filters", "8,12,4")
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.models.load_model(str(out / "espcn.keras"), safe_mode=True, compile=False)
    assert [model.get_layer(name).filters for name in ("conv1", "conv2", "conv3")] == [8, 12, 4]
    assert modules.model_upscale_factor(model) == 4
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 28), dtype=np.uint8)).save(tmp_path / "s.png")
    result = run_script("predict.py", "--model", str(out / "espcn.keras"), "--input", str(tmp_path / "s.png"),
                        "--output-dir", str(tmp_path / "sr"))
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(tmp_path / "sr" / "s_x4.png") as image:
        assert image.size == (112, 80)
