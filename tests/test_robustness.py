"""Bad data, bad flags and interrupted training (issue: never lose work, never crash)."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, brain_like, history_epochs, run_script, write_tree

FAST = ["--batch-size", "2", "--patch-size", "32", "--precision", "float32"]


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
                                         (["--pipeline-batches", "0"], "--pipeline-batches"),
                                         (["--filters", "64,64"], "--filters"),
                                         (["--filters", "64,0,32"], "--filters")])
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


# Tiny epochs (5 steps, no XLA compilation): 30 of them leave room to stop the run with epochs to spare; early
# stopping is out of the way so that a finished run has exactly EPOCHS epochs.
EPOCHS = 30
RUN = [*FAST, "--jit", "off", "--epochs", str(EPOCHS), "--patience", "1000"]


def start_training(data, out, *flags):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "train.py", "--data-dir", data, "--output-dir", out, *RUN, *flags],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_with_epochs_left(proc, out, how, timeout=240):
    """Sends `how` once an epoch is done, while the run provably has epochs left, whatever the machine's speed.

    The process is frozen (SIGSTOP) while history.csv is read: with k <= EPOCHS - 2 epochs written there, epoch
    k + 2 cannot have begun, and a stop request ends the run at the latest after the epoch in progress.
    Returns the epochs done when it was frozen.
    """
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if history_epochs(out):
            proc.send_signal(signal.SIGSTOP)
            done = len(history_epochs(out))
            assert done <= EPOCHS - 2, f"{done} of {EPOCHS} epochs before the run could be frozen"
            proc.send_signal(how)
            proc.send_signal(signal.SIGCONT)
            return done
        time.sleep(0.005)
    raise AssertionError(f"no completed epoch in time (exit {proc.poll()})")


def file_states(out):
    """Every file under `out` with its bytes: to show that a refused command left them untouched."""
    states = {}
    for root, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                states[os.path.relpath(os.path.join(root, name), out)] = f.read()
    return states


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_resumes_with_every_epoch_once(tmp_path, how, ctrl_c_reaches_children):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=2)
    out = str(tmp_path / "out")
    proc = start_training(data, out)
    done_when_frozen = stop_with_epochs_left(proc, out, how)
    _, err = proc.communicate(timeout=120)
    if how != signal.SIGKILL:  # a clean stop: one message, no traceback
        assert proc.returncode == 130, err[-2000:]
        assert err.count("interrupted (") == 1 and "resume" in err and "Traceback" not in err, err[-2000:]
    else:
        assert proc.returncode == -signal.SIGKILL
    done = history_epochs(out)
    assert done_when_frozen <= len(done) <= done_when_frozen + 1 and done == list(range(len(done)))
    assert os.listdir(os.path.join(out, "backup")) == [f"epoch-{len(done):06d}"]

    if how == signal.SIGTERM:  # another run's command is refused, naming the setting, and changes nothing
        before = file_states(out)
        other = run_script("train.py", "--data-dir", data, "--output-dir", out, *RUN, "--seed", "7")
        assert other.returncode == 2 and "Traceback" not in other.stderr
        (line,) = other.stderr.strip().splitlines()
        assert "--seed (backup 1337, now 7)" in line and "--restart" in line, line
        assert file_states(out) == before

    result = run_script("train.py", "--data-dir", data, "--output-dir", out, *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed" in result.stdout
    assert history_epochs(out) == list(range(EPOCHS)), "every epoch exactly once"
    assert not os.path.exists(os.path.join(out, "backup")), "a finished run leaves no backup"
    assert not [f for f in os.listdir(out) if "partial" in f]


def test_restart_discards_a_backup_that_cannot_be_checked(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=2)
    out = tmp_path / "out"
    (out / "backup").mkdir(parents=True)
    for name in ("checkpoint", "ckpt-3.index", "ckpt-3.data-00000-of-00001"):  # an older train.py's backup
        (out / "backup" / name).write_text("old")
    refused = run_script("train.py", "--data-dir", data, "--output-dir", str(out), *FAST, "--epochs", "1")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--restart" in refused.stderr and (out / "backup" / "ckpt-3.index").exists()
    fresh = run_script("train.py", "--data-dir", data, "--output-dir", str(out), *FAST, "--epochs", "1", "--restart")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "discarded" in fresh.stdout and "resumed" not in fresh.stdout
    assert history_epochs(str(out)) == [0] and not (out / "backup").exists()


def test_a_linked_backup_folder_is_refused(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(elsewhere, tmp_path / "out" / "backup")
    result = run_script("train.py", "--data-dir", data, "--output-dir", str(tmp_path / "out"), *FAST, "--epochs", "1")
    assert result.returncode == 2 and "symbolic link" in result.stderr and not os.listdir(elsewhere)
