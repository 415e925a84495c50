"""Two real tf.distribute workers on loopback ports train one model together."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from conftest import ROOT, write_tree


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(data, out, epochs):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "train.py", "--strategy", "multi_worker", "--data-dir", data, "--output-dir", out,
             "--epochs", str(epochs), "--batch-size", "2", "--patch-size", "32", "--precision", "float32"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def launch_workers(data, out, epochs=2, timeout=300):
    procs = start_workers(data, out, epochs)
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            proc.kill()
    return [p.returncode for p in procs], outputs


def test_two_workers_train_the_same_model(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=2)
    out = str(tmp_path / "out")
    codes, outputs = launch_workers(data, out)
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    for output in outputs:
        assert "replicas in sync: 2" in output
    prints = [re.search(r"weights fingerprint: (\w+)", o).group(1) for o in outputs]
    assert prints[0] == prints[1], "workers ended with different weights"
    assert sorted(os.listdir(out)) == ["espcn.keras", "history.csv", "loss.png", "psnr.png"]
    with open(os.path.join(out, "history.csv")) as f:
        assert len(f.read().strip().splitlines()) == 3  # header + 2 epochs, written once, by the chief


def test_killed_workers_resume_from_the_chiefs_backup(tmp_path):
    data = write_tree(tmp_path / "AD_NC", n_train=6, n_test=2)
    out = str(tmp_path / "out")
    procs = start_workers(data, out, epochs=3)
    history = os.path.join(out, "history.csv")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(history) and len(open(history).readlines()) >= 2):
        assert all(p.poll() is None for p in procs), "a worker ended early"
        time.sleep(0.005)
    for proc in procs:  # frozen first: the history read next proves the run unfinished, whatever the machine's speed
        proc.send_signal(signal.SIGSTOP)
    done = len(open(history).readlines()) - 1
    assert done < 3, "the run finished before the workers could be frozen"  # a backup is deleted only after that
    for proc in procs:
        proc.kill()
        proc.communicate(timeout=60)
    assert os.path.isdir(os.path.join(out, "backup"))
    codes, outputs = launch_workers(data, out, epochs=3)
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert all("resumed from" in o for o in outputs)
    with open(history) as f:
        epochs = [line.split(",")[0] for line in f.read().strip().splitlines()[1:]]
    assert epochs == ["0", "1", "2"], epochs
