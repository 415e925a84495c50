"""What train.py's loop decides: the epoch kept, when it stops, and the learning rate of every step."""
import csv
import math
import re

import numpy as np
import pytest

import modules
import train
from conftest import write_tree
from common.tensorflow_env import keras

# A tiny network on tiny crops, no XLA: an epoch is a few steps of milliseconds, in this process.
TINY = ["--batch-size", "2", "--patch-size", "32", "--filters", "4,4,4", "--precision", "float32", "--jit", "off"]


@pytest.fixture(autouse=True)
def seeded():
    """Every random draw of a test (NumPy, TensorFlow, Keras initialisers) the same on every run."""
    keras.utils.set_random_seed(4)


def train_tiny(tmp_path, *flags):
    """train.train on a tree of 4 slices (3 training, 1 validation), in this process; returns (output dir, args)."""
    data = write_tree(tmp_path / "AD_NC", n_train=4, n_test=1)
    out = tmp_path / "out"
    args = train.parse_args(["--data-dir", data, "--output-dir", str(out), *TINY, *flags])
    train.train(args)
    return out, args


def history_rows(out):
    with open(out / "history.csv") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def steps_per_epoch(printed, args, replicas=1):
    """Training steps an epoch from the run's printed "N training ... slices": N crops x --patches-per-image,
    in global batches of --batch-size per replica."""
    n_train = int(re.search(r"(\d+) training and \d+ validation slices", printed).group(1))
    return n_train * args.patches_per_image // (args.batch_size * replicas)


def test_the_best_epoch_is_kept_and_training_stops_after_patience_epochs_without_a_better_one(
        tmp_path, monkeypatch, capsys):
    """A known sequence of validation losses, fed where validation computes them; the training steps, the
    bookkeeping of the best epoch, early stopping and the files written are train.py's own."""
    losses = [0.5, 0.3, 0.4, 0.2, 0.2, 0.25, 0.3, 0.1, 0.05]  # best at epoch 3; a tie is not better
    weights = []  # the model's weights at each epoch's validation

    def scripted_validation(model, dataset):
        weights.append([w.copy() for w in model.get_weights()])
        loss = losses[len(weights) - 1]
        return {"loss": loss, "psnr": 10 * math.log10(1 / loss), "ssim": 0.5}

    monkeypatch.setattr(modules, "evaluate_pairs", scripted_validation)
    out, _ = train_tiny(tmp_path, "--epochs", str(len(losses)), "--patience", "3")
    printed = capsys.readouterr().out
    # epochs 4, 5 and 6 bring nothing better than epoch 3's 0.2: the run ends after epoch 6 (epochs 7 and 8,
    # which would have been better, never run)
    assert [row["val_loss"] for row in history_rows(out)] == losses[:7]
    assert len(weights) == 7
    assert "early stopping: no better validation loss for 3 epochs" in printed
    assert "best epoch 4:" in printed  # counted from 1
    saved = keras.models.load_model(str(out / "espcn.keras"), safe_mode=True, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, weights[3]))
    for other in (2, 4, 6):  # the weights moved every epoch, so the check above tells the epochs apart
        assert not all(np.array_equal(a, b) for a, b in zip(saved, weights[other]))
    assert not (out / "backup").exists()


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_learning_rate_follows_its_schedule_and_history_records_it(tmp_path, capsys, schedule):
    """--lr-schedule cosine: from --learning-rate down to 2% of it over --epochs (Keras' CosineDecay with
    alpha 0.02, by training step); constant: --learning-rate throughout.  history.csv's learning_rate is the
    rate after each epoch's last step."""
    epochs, rate = 4, 0.002
    out, args = train_tiny(tmp_path, "--epochs", str(epochs), "--learning-rate", str(rate), "--lr-schedule",
                           schedule, "--patience", "1000")
    steps = steps_per_epoch(capsys.readouterr().out, args)
    assert steps >= 2
    rows = history_rows(out)
    assert [int(row["epoch"]) for row in rows] == list(range(epochs))
    for row in rows:
        done = (row["epoch"] + 1) * steps / (epochs * steps)  # share of the run's steps taken
        want = rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done))) if schedule == "cosine" else rate
        assert row["learning_rate"] == pytest.approx(want, rel=1e-5), (row, steps)
    if schedule == "cosine":
        assert rows[-1]["learning_rate"] == pytest.approx(0.02 * rate, rel=1e-5)
