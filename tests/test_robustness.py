"""Bad data, bad flags and interrupted training (issue: never lose work, never crash)."""
import csv
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, brain_like, run_script, write_tree

FAST = ["--batch-size", "2", "--patch-size", "32", "--precision", "float32"]


def history_epochs(out):
    path = os.path.join(out, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_training_goes_on_with_every_usable_image(tmp_path):
    root = write_tree(tmp_path / "AD_NC", n_train=3, n_test=2)
    folder = tmp_path / "AD_NC" / "train" / "AD"
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a jpeg")
    Image.fromarray(brain_like(256, 240, 5)).save(folder / "whole.jpg")
    (folder / "cut.jpeg").write_bytes((folder / "whole.jpg").read_bytes()[:300])
    Image.fromarray(brain_like(100, 80, 1)).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(brain_like(301, 257, 2)).convert("P").save(folder / "palette_odd.png")
    Image.fromarray(brain_like(70, 333, 3).astype(np.uint16) * 200).save(folder / "deep.png")
    out = str(tmp_path / "out")
    result = run_script("train.py", "--data-dir", root, "--output-dir", out, "--epochs", "1", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    for bad in ("zero.png", "text.jpg", "cut.jpeg"):
        assert result.stderr.count(bad) == 1, (bad, result.stderr[-2000:])
    for good in ("rgba.png", "palette_odd.png", "deep.png", "whole.jpg"):
        assert good not in result.stderr
    counts = re.search(r"(\d+) training and (\d+) validation slices", result.stdout)
    assert int(counts.group(1)) + int(counts.group(2)) == 7  # 3 from the tree + 4 usable odd ones
    assert os.path.exists(os.path.join(out, "espcn.keras"))


@pytest.mark.parametrize("case", ["missing", "empty", "no_test", "nothing_usable"])
def test_bad_data_dir_is_one_line_and_non_zero(tmp_path, case):
    root = tmp_path / "AD_NC"
    if case == "empty":
        root.mkdir()
    elif case == "no_test":
        write_tree(root, n_train=2, n_test=1)
        import shutil
        shutil.rmtree(root / "test")
    elif case == "nothing_usable":
        for split in ("train", "test"):
            (root / split / "AD").mkdir(parents=True)
            (root / split / "AD" / "x.png").write_text("not a png")
    result = run_script("train.py", "--data-dir", str(root), "--output-dir", str(tmp_path / "out"), *FAST)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and str(root) in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags,named", [(["--epochs", "0"], "--epochs"), (["--batch-size", "-1"], "--batch-size"),
                                         (["--upscale-factor", "3x"], "--upscale-factor"),
                                         (["--upscale-factor", "16"], "--upscale-factor"),
                                         (["--pipeline-batches", "0"], "--pipeline-batches")])
def test_bad_flags_are_one_line(flags, named):
    result = run_script("train.py", *flags)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr


@pytest.mark.parametrize("script", ["train.py", "predict.py"])
def test_unwritable_output_dir_is_one_line(tmp_path, tiny_tree, script):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    flags = FAST if script == "train.py" else []
    result = run_script(script, "--data-dir", tiny_tree, "--output-dir", str(blocker / "out"), *flags)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "--output-dir" in result.stderr


@pytest.mark.parametrize("content", [None, b"", b"garbage bytes"])
def test_predict_with_a_bad_model_is_one_line(tmp_path, tiny_tree, content):
    model = tmp_path / "model.keras"
    if content is not None:
        model.write_bytes(content)
    result = run_script("predict.py", "--data-dir", tiny_tree, "--model", str(model), "--output-dir", str(tmp_path))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and str(model) in result.stderr


@pytest.fixture
def ctrl_c_reaches_children():
    """Ctrl-C in a terminal reaches a train.py whose SIGINT is not ignored. A suite started as a background job
    (as CI does) inherits SIGINT ignored, and so would train.py, which keeps Python's rule of honouring an
    inherited ignore; a handler here, unlike an ignore, is reset to the default in the child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def start_training(data, out, epochs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "train.py", "--data-dir", data, "--output-dir", out,
                             "--epochs", str(epochs), *FAST], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(proc, out, count, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(history_epochs(out)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no completed epoch in time (exit {proc.poll()})")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_resumes_with_every_epoch_once(tmp_path, how, ctrl_c_reaches_children):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=2)
    out = str(tmp_path / "out")
    epochs = 8  # a tiny epoch takes about 0.15 s: enough left to run when the signal comes after the first
    proc = start_training(data, out, epochs)
    wait_for_epochs(proc, out, 1)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=120)
    if how != signal.SIGKILL:  # a clean stop: one message, no traceback
        assert proc.returncode == 130 and "resume" in err and "Traceback" not in err, err[-2000:]
    done = history_epochs(out)
    assert 1 <= len(done) < epochs and os.path.isdir(os.path.join(out, "backup"))

    result = run_script("train.py", "--data-dir", data, "--output-dir", out, "--epochs", str(epochs), *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed" in result.stdout
    assert history_epochs(out) == list(range(epochs)), "every epoch exactly once"
    assert not os.path.exists(os.path.join(out, "backup")), "a finished run leaves no backup"
    assert not [f for f in os.listdir(out) if "partial" in f]

    if how == signal.SIGKILL:
        fresh = run_script("train.py", "--data-dir", data, "--output-dir", str(tmp_path / "other"), "--epochs", "1",
                           *FAST)
        assert fresh.returncode == 0 and "resumed" not in fresh.stdout
