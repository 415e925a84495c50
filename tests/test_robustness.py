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
# Waits that no correct run reaches, even on a loaded machine: they only bound a broken one.
PATIENCE_S = 600


class Training:
    """train.py in a subprocess, its output going to files (a pipe nobody reads while it runs could fill up)."""

    def __init__(self, data, out, logs, *flags):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        logs.mkdir(exist_ok=True)
        self.stdout_path, self.stderr_path = (logs / f"{len(os.listdir(logs))}-{name}" for name in ("out", "err"))
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "train.py", "--data-dir", data, "--output-dir", out, *RUN,
                                          *flags], cwd=ROOT, env=env, stdout=stdout, stderr=stderr)

    def finish(self):
        """(exit code, stdout, stderr) once the process has ended."""
        self.proc.wait(timeout=PATIENCE_S)
        return self.proc.returncode, self.stdout_path.read_text(), self.stderr_path.read_text()


def freeze_when(proc, out, moment, poll_s=0.005):
    """Freezes the process (SIGSTOP) the first time moment(epochs in history.csv) is true; returns those epochs.

    Read while frozen, history.csv proves the run has epochs left: with k <= EPOCHS - 2 epochs written there,
    epoch k + 2 cannot have begun, and a stop ends the run at the latest after the epoch in progress.
    """
    deadline = time.time() + PATIENCE_S
    while time.time() < deadline and proc.poll() is None:
        if moment(history_epochs(out)):
            proc.send_signal(signal.SIGSTOP)
            done = len(history_epochs(out))
            assert done <= EPOCHS - 2, f"{done} of {EPOCHS} epochs before the run could be frozen"
            return done
        time.sleep(poll_s)
    raise AssertionError(f"the moment to stop never came (exit {proc.poll()})")


def stop_with_epochs_left(proc, out, how, after=0):
    """Sends `how` once more than `after` epochs are in history.csv, while the run provably has epochs left.

    Returns the epochs done when it was frozen.
    """
    done = freeze_when(proc, out, lambda epochs: len(epochs) > after)
    proc.send_signal(how)
    proc.send_signal(signal.SIGCONT)
    return done


def saving(out):
    """A moment(epochs) for freeze_when: an epoch after the first is being saved (backup/ holds something besides
    the backup of the epochs in history.csv: the next one's .partial-* folder, or the next one itself)."""
    def moment(epochs):
        try:
            names = set(os.listdir(os.path.join(out, "backup")))
        except FileNotFoundError:
            return False
        return bool(epochs) and names != {f"epoch-{len(epochs):06d}"}
    return moment


def what_a_kill_may_leave(out, done):
    """Checks what a kill -9 during saving leaves; returns (the backup a resume must take, stray files in out).

    backup/ holds a complete epoch-N folder for N = the epochs in history.csv, or one more (killed after the
    backup was renamed into place, before history.csv was rewritten); besides it only an older epoch-* folder
    (killed before or while it was deleted) or a .partial-* folder (killed in mid-write).  out/ may hold the
    temporary file of a model or history write (".partial-<random>-<name>"), never a half-written output.
    """
    assert history_epochs(out) == list(range(done))
    names = os.listdir(os.path.join(out, "backup"))
    complete = sorted(name for name in names if re.fullmatch(r"epoch-\d{6}", name))
    newest = complete[-1]
    assert int(newest[-6:]) in (done, done + 1), (done, names)
    assert {"settings.json", "ckpt.index"} <= set(os.listdir(os.path.join(out, "backup", newest))), newest
    assert all(name in complete or name.startswith(".partial-") for name in names), names
    assert len(names) - len(complete) <= 1, names  # one write at a time
    stray = {name for name in os.listdir(out) if name not in ("backup", "espcn.keras", "history.csv", "logs")}
    assert all(re.fullmatch(r"\.partial-[\w-]+-(espcn\.keras|history\.csv)", name) for name in stray), stray
    return newest, stray


def file_states(out):
    """Every file under `out` with its bytes: to show that a refused command left them untouched."""
    states = {}
    for root, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                states[os.path.relpath(os.path.join(root, name), out)] = f.read()
    return states


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda how: how.name)
def test_interrupted_training_resumes_with_every_epoch_once(tmp_path, how, ctrl_c_reaches_children):
    """SIGINT and SIGTERM after an epoch: a clean stop.  kill -9 while an epoch is being saved: whatever it
    leaves, the resumed run takes the newest complete backup, and its first saved epoch clears the rest."""
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=2)
    out, logs = str(tmp_path / "out"), tmp_path / "logs"
    run = Training(data, out, logs)
    resumed_from, stray = None, set()
    if how == signal.SIGKILL:
        killed_after = freeze_when(run.proc, out, saving(out), poll_s=0.0005)  # a save takes milliseconds
        run.proc.kill()
        code, _, _ = run.finish()
        assert code == -signal.SIGKILL
        resumed_from, stray = what_a_kill_may_leave(out, killed_after)
        run = Training(data, out, logs)  # resumed, and stopped cleanly once it has saved an epoch of its own
        done_when_frozen = stop_with_epochs_left(run.proc, out, signal.SIGTERM, after=killed_after)
    else:
        done_when_frozen = stop_with_epochs_left(run.proc, out, how)
    code, stdout, err = run.finish()
    assert code == 130, err[-2000:]  # a clean stop: one message, no traceback
    assert err.count("interrupted (") == 1 and "resume" in err and "Traceback" not in err, err[-2000:]
    if resumed_from:
        assert f"resumed from {os.path.join(out, 'backup', resumed_from)}:" in stdout, stdout[-2000:]
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
    # a model or history write cut by kill -9 leaves its temporary file (nothing removes it); no run adds one
    assert set(os.listdir(out)) == {"espcn.keras", "history.csv", "psnr.png", "loss.png", "logs"} | stray


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
