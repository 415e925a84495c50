"""Smoke test of the two commands a user runs: train.py, then predict.py."""
import csv
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import dataset
import modules
import predict
import train
from conftest import ROOT, run_script, write_tree
from common.tensorflow_env import keras


@pytest.fixture(autouse=True)
def seeded():
    """Every random draw of a test (NumPy, TensorFlow, Keras initialisers) the same on every run."""
    keras.utils.set_random_seed(3)


def documented_history_columns():
    """The columns of history.csv as the documentation lists them: "`history.csv` (epoch, loss, ...)"."""
    docs = os.path.join(ROOT, "docs")
    pages = [os.path.join(ROOT, "README.md")]
    if os.path.isdir(docs):
        pages += [os.path.join(docs, name) for name in sorted(os.listdir(docs)) if name.endswith(".md")]
    for page in pages:
        with open(page) as f:
            found = re.search(r"`history\.csv` \(([^)]*)\)", " ".join(f.read().split()))
        if found:
            return found.group(1).split(", ")
    raise AssertionError("no page lists history.csv's columns")


def best_constant_psnr(paths):
    """Mean PSNR over the slices of the best constant output for each (its own mean): what a model that has
    learnt nothing of the slices' structure can reach at most."""
    targets = dataset.load_slices(paths, progress=False).images / 255.0
    return float(np.mean(10 * np.log10(1 / targets.reshape(len(targets), -1).var(axis=1))))


def test_train_then_predict_writes_every_output(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=3)
    out = str(tmp_path / "out")
    # 16 crops a slice: 20 steps an epoch, enough to learn more than a constant in one epoch (measured 18.6-20.3
    # dB after the first epoch, 19.6-21.9 after the second, against 11.3 dB for the best constant)
    result = run_script("train.py", "--data-dir", data, "--output-dir", out, "--epochs", "2", "--batch-size", "4",
                        "--patch-size", "64", "--patches-per-image", "16", "--precision", "float32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas in sync: 1" in result.stdout
    for name in ("espcn.keras", "history.csv", "psnr.png", "loss.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "history.csv")) as f:
        assert f.readline().strip().split(",") == documented_history_columns()
        f.seek(0)
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert rows[1]["loss"] < rows[0]["loss"] and rows[1]["val_loss"] < rows[0]["val_loss"], rows
    # an all-black output scores 9.5 dB on these slices, the best constant 11.3: the model must do far better
    constant = best_constant_psnr(dataset.train_validation_paths(data)[1])
    assert all(row["val_psnr"] > constant + 3 for row in rows), (constant, rows)
    assert not os.path.exists(os.path.join(out, "backup")), "a finished run leaves no backup"
    with Image.open(os.path.join(out, "psnr.png")) as plot:
        assert plot.size[0] > 100

    result = run_script("predict.py", "--data-dir", data, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    # the model train.py just wrote is preferred to the shipped ones, and named
    assert f"model: ESPCN, {os.path.join(out, 'espcn.keras')} (trained into {out}" in result.stdout, result.stdout
    with open(os.path.join(out, "evaluation.json")) as f:
        summary = json.load(f)
    assert set(summary) == {"n_images", "model_psnr", "bicubic_psnr", "model_ssim", "bicubic_ssim"}
    assert summary["n_images"] == 3
    assert all(np.isfinite(v) for v in summary.values())
    with Image.open(os.path.join(out, "multi_comp_3.png")) as figure:
        assert figure.size[1] > figure.size[0]  # one row per test image


def help_entries(text):
    """{flag: its help text} from argparse's --help output (each flag's help may run on to following lines)."""
    entries, flag = {}, None
    for line in text.splitlines():
        found = re.match(r"  (-[-\w]+)", line)
        if found:
            flag = found.group(1)
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


# Defaults that parse_args resolves after parsing (None in the parser): predict's --axis is 2 in-plane, the
# largest voxel size with --through-plane.
RESOLVED_AFTER_PARSING = {("predict.py", "--axis"): "None"}


@pytest.mark.parametrize("script", [train, predict], ids=["train.py", "predict.py"])
def test_help_shows_every_flags_default(script, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # one line a flag
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(["--help"])
    assert exit_.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    entries.pop("-h")
    defaults = vars(script.parse_args([]))
    name = os.path.basename(script.__file__)
    assert {"--" + dest.replace("_", "-") for dest in defaults} == set(entries)  # every flag has a help entry
    for flag, text in entries.items():
        shown = re.findall(r"\(default: (.*?)\)(?= \(default|$)", text)
        want = RESOLVED_AFTER_PARSING.get((name, flag), str(defaults[flag[2:].replace("-", "_")]))
        assert shown and shown[-1] == want, (name, flag, text)


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
    with Image.open(tmp_path / "sr" / "s_espcn_x4.png") as image:
        assert image.size == (112, 80)
