"""Stops train.py many times at random moments and checks every stop and every resume.

usage: python tools/stress_stops.py [--stops 100] [--seed 0] [--work DIR]

Trains a tiny tree (written here) again and again in one output dir.  Each
run is stopped with SIGINT, SIGTERM or kill -9 (chosen at random), either
after a random delay (start-up, training steps, validation or saving, as it
falls) or the moment a backup write is under way (a .partial-* folder in
backup/), and the next run resumes it.  When a run finishes, its history must
hold every epoch exactly once, and a fresh run starts (--restart).  Reports:
native crashes (a negative exit other than kill -9's, 134, 139, or a "Fatal
Python error"), SIGINT/SIGTERM exits other than 130 or without exactly one
"interrupted (" message, tracebacks, runs that did not resume, and histories
that are wrong.  Not part of the test suite: it takes about 15-30 minutes.
Exit status 0 when nothing was wrong.
"""
import argparse
import collections
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from training.toy_runs import history_epochs, write_tree  # noqa: E402  (the suite's tiny trees and history reader)

EPOCHS = 60
FLAGS = ["--batch-size", "2", "--patch-size", "32", "--precision", "float32", "--jit", "off",
         "--epochs", str(EPOCHS), "--patience", "1000"]
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def partial_backups(out):
    try:
        return {name for name in os.listdir(os.path.join(out, "backup")) if name.startswith(".partial-")}
    except OSError:
        return set()


def history_stamp(out):
    try:
        return os.stat(os.path.join(out, "history.csv")).st_mtime_ns
    except OSError:
        return None


def start(data, out, restart):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "train.py", "--data-dir", data, "--output-dir", out, *FLAGS]
    return subprocess.Popen(command + (["--restart"] if restart else []), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_moment(proc, out, moment, rng):
    """Waits for the moment to stop the run; True when it came, False if the run ended first.

    start-up: 0.3-4 s after the start.  training: 0-1 s after this run's first
    completed epoch (then it is in a training step, validation or saving).
    backup write: the moment a new .partial-* folder appears in backup/.
    """
    began, stale, stamp = time.time(), partial_backups(out), history_stamp(out)
    delay, epoch_seen = rng.uniform(0.3, 4.0), None
    while time.time() < began + 300:
        if proc.poll() is not None:
            return False
        if moment == "start-up" and time.time() >= began + delay:
            return True
        if moment == "backup write" and partial_backups(out) - stale:
            return True
        if moment == "training":
            if epoch_seen is None and history_stamp(out) != stamp:
                epoch_seen, delay = time.time(), rng.uniform(0.0, 1.0)
            if epoch_seen is not None and time.time() >= epoch_seen + delay:
                return True
        time.sleep(0.0005 if moment == "backup write" else 0.005)
    return proc.poll() is None


def problems_of_stop(how, code, err):
    """What is wrong with a stopped run's ending (an empty list when nothing is)."""
    problems = []
    if "Fatal Python error" in err or code in (134, 139, -6, -11) or (code < 0 and code != -signal.SIGKILL):
        problems.append(f"native crash (exit {code})")
    if "Traceback" in err:
        problems.append("traceback")
    if how != signal.SIGKILL:
        if code not in (130, 0):
            problems.append(f"exit {code}, not 130")
        if code == 130 and err.count("interrupted (") != 1:
            problems.append("no single 'interrupted' message")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # children get a SIGINT that is not ignored
    rng = random.Random(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="stress_stops_")
    data = write_tree(os.path.join(work, "AD_NC"), n_train=12, n_test=2)
    out = os.path.join(work, "out")
    tally, phases, problems = collections.Counter(), collections.Counter(), []
    finished_runs, restart, started = 0, True, time.time()
    while tally["stops"] < args.stops:
        how = rng.choice(SIGNALS)
        moment = rng.choices(["start-up", "training", "backup write"], weights=[1, 3, 2])[0]
        had_backup = os.path.isdir(os.path.join(out, "backup")) and not restart
        proc = start(data, out, restart)
        restart = False
        hit = wait_for_moment(proc, out, moment, rng)
        if hit:
            proc.send_signal(how)
        try:
            stdout, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, err = proc.communicate()
            problems.append(f"stop {tally['stops'] + 1}: no exit within 180 s of {how.name}")
        if had_backup and "Epoch " in stdout and "resumed from" not in stdout:  # it got as far as training
            problems.append(f"stop {tally['stops'] + 1}: did not resume the backup")
        if proc.returncode == 0:  # the run finished before (or despite) the signal
            epochs = history_epochs(out)
            finished_runs += 1
            if epochs != list(range(EPOCHS)):
                problems.append(f"finished run {finished_runs}: history epochs {epochs}")
            restart = True
            if not hit:
                continue
        if hit:
            tally["stops"] += 1
            tally[f"{how.name} at {moment}"] += 1
            phase = re.search(r"interrupted \(\w+ during (the )?([\w-]+)", err)
            phases[phase.group(2) if phase else ("killed" if how == signal.SIGKILL else f"exit {proc.returncode}")] += 1
            found = problems_of_stop(how, proc.returncode, err)
            problems += [f"stop {tally['stops']} ({how.name} at {moment}): {p}: {err[-1500:]}" for p in found]
        print(f"[{time.time() - started:6.0f} s] stops {tally['stops']}, finished runs {finished_runs}, "
              f"problems {len(problems)}", flush=True)
    # the last run, resumed to the end, must hold every epoch exactly once
    final = start(data, out, restart)
    stdout, err = final.communicate(timeout=600)
    epochs = history_epochs(out)
    if final.returncode != 0 or epochs != list(range(EPOCHS)):
        problems.append(f"final resume: exit {final.returncode}, history epochs {epochs}: {err[-1500:]}")
    else:
        finished_runs += 1
    print(f"\n{tally['stops']} stops in {time.time() - started:.0f} s: "
          + ", ".join(f"{key} {count}" for key, count in sorted(tally.items()) if key != "stops"))
    print("where SIGINT/SIGTERM stops landed (train.py's message): "
          + ", ".join(f"{key} {count}" for key, count in sorted(phases.items())))
    print(f"{finished_runs} runs finished with every epoch exactly once; problems: {len(problems)}")
    for problem in problems:
        print(" -", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
