"""Two real tf.distribute workers on loopback ports train one model together."""
import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT, write_tree

# Waits that no correct run reaches, even on a loaded machine: they only bound a broken one.
PATIENCE_S = 900
# What a worker prints when its port was taken between free_ports closing it and the worker binding it
# (TensorFlow binds 0.0.0.0:<port>; another process may have taken the port on any interface meanwhile).
BIND_FAILURE = re.compile(r"Could not start gRPC server|Failed to add port|Address already in use")
ATTEMPTS = 3


def read(path):
    with open(path) as f:
        return f.read()


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Workers:
    """Two train.py workers of one MultiWorkerMirroredStrategy cluster, each writing its output to a file (a pipe
    nobody reads while they train could fill up and stall them)."""

    def __init__(self, data, out, epochs, logs):
        workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
        os.makedirs(logs, exist_ok=True)
        first = len(os.listdir(logs))
        self.logs = [os.path.join(logs, f"{first + index}-worker{index}.log") for index in range(2)]
        self.procs = []
        for index, log in enumerate(self.logs):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                            "task": {"type": "worker", "index": index}})}
            with open(log, "w") as output:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "train.py", "--strategy", "multi_worker", "--data-dir", data, "--output-dir",
                     out, "--epochs", str(epochs), "--batch-size", "2", "--patch-size", "32", "--precision",
                     "float32"], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT))

    def outputs(self):
        return [read(log) for log in self.logs]

    def failed_to_bind(self):
        """True when a worker has ended because its port was taken (the others then wait for it forever)."""
        return any(proc.poll() not in (None, 0) and BIND_FAILURE.search(output)
                   for proc, output in zip(self.procs, self.outputs()))

    def kill(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()

    def wait(self):
        """Exit codes once every worker has ended, or None after a bind failure (the workers are then killed)."""
        deadline = time.time() + PATIENCE_S
        while any(proc.poll() is None for proc in self.procs):
            if self.failed_to_bind():
                self.kill()
                return None
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f"workers still running after {PATIENCE_S} s:\n" + "\n\n".join(
                    output[-3000:] for output in self.outputs()))
            time.sleep(0.2)
        return None if self.failed_to_bind() else [proc.returncode for proc in self.procs]


def start_workers(data, out, epochs, logs, running):
    """Workers that got their ports: new ports and a new start after a bind failure, up to ATTEMPTS times.

    running(workers) waits while they work and returns True, or False if they ended first.  A bind failure
    happens before a worker reads or writes anything, so a new start finds the output dir as it was.
    """
    for _ in range(ATTEMPTS):
        workers = Workers(data, out, epochs, logs)
        if running(workers) or not workers.failed_to_bind():
            return workers
        workers.kill()
    raise AssertionError(f"no free ports in {ATTEMPTS} attempts:\n" + "\n\n".join(workers.outputs()))


def launch_workers(data, out, logs, epochs=2):
    """Runs two workers to the end; returns (exit codes, outputs)."""
    for _ in range(ATTEMPTS):
        workers = Workers(data, out, epochs, logs)
        codes = workers.wait()
        if codes is not None:
            return codes, workers.outputs()
    raise AssertionError(f"no free ports in {ATTEMPTS} attempts:\n" + "\n\n".join(workers.outputs()))


def test_two_workers_train_the_same_model(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=2)
    out = str(tmp_path / "out")
    codes, outputs = launch_workers(data, out, tmp_path / "logs")
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    for output in outputs:
        assert "replicas in sync: 2" in output
    prints = [re.search(r"weights fingerprint: (\w+)", o).group(1) for o in outputs]
    assert prints[0] == prints[1], "workers ended with different weights"
    assert sorted(os.listdir(out)) == ["espcn.keras", "history.csv", "logs", "loss.png", "psnr.png"]
    with open(os.path.join(out, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1"]  # written once, by the chief
    # the rate is --learning-rate (0.001) times the 2 replicas, decayed by the cosine over the run's steps
    n_train = int(re.search(r"(\d+) training and \d+ validation slices", outputs[0]).group(1))
    steps = n_train * 2 // (2 * 2)  # 2 crops a slice, global batches of 2 per replica x 2 replicas
    assert steps >= 2
    for epoch, row in enumerate(rows):
        done = (epoch + 1) / len(rows)
        want = 2 * 0.001 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done)))
        assert math.isclose(float(row["learning_rate"]), want, rel_tol=1e-5), (row, want)


def test_killed_workers_resume_from_the_chiefs_backup(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=2)
    out, logs = str(tmp_path / "out"), tmp_path / "logs"
    history = os.path.join(out, "history.csv")

    def one_epoch_saved(workers):
        deadline = time.time() + PATIENCE_S
        while not (os.path.exists(history) and len(read(history).splitlines()) >= 2):
            if any(proc.poll() is not None for proc in workers.procs):
                return False
            assert time.time() < deadline, "no epoch saved in %d s" % PATIENCE_S
            time.sleep(0.005)
        return True

    workers = start_workers(data, out, 3, logs, one_epoch_saved)
    assert all(proc.poll() is None for proc in workers.procs), "a worker ended early:\n" + "\n\n".join(
        output[-3000:] for output in workers.outputs())
    for proc in workers.procs:  # frozen first: the history read next proves the run unfinished, whatever the speed
        proc.send_signal(signal.SIGSTOP)
    done = len(read(history).splitlines()) - 1
    assert done < 3, "the run finished before the workers could be frozen"  # a backup is deleted only after that
    workers.kill()
    assert os.path.isdir(os.path.join(out, "backup"))
    codes, outputs = launch_workers(data, out, logs, epochs=3)
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert all("resumed from" in o for o in outputs)
    epochs = [line.split(",")[0] for line in read(history).strip().splitlines()[1:]]
    assert epochs == ["0", "1", "2"], epochs
