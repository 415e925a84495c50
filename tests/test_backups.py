"""The per-epoch backup: a crash at any moment of a write leaves the previous backup whole and restorable."""
import os

import numpy as np
import pytest

from common import atomic_files
from common.tensorflow_env import keras
import modules
import train
from training import backups

SETTINGS = {"--seed": 1337, "--epochs": 5}


def new_state():
    model = modules.get_model(4, filters=(4, 4, 4))
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    return model, backups.TrainingState(model, optimizer)


def train_a_little(model, state, epoch):
    """Stands in for an epoch: new weights, a history row."""
    model.set_weights([w + 0.01 * (epoch + 1) for w in model.get_weights()])
    state.record({"epoch": epoch, "val_loss": 1.0 / (epoch + 1)}, model)


def test_a_crash_while_writing_leaves_the_previous_backup_restorable(tmp_path, monkeypatch):
    folder = str(tmp_path / "backup")
    model, state = new_state()
    train_a_little(model, state, 0)
    backups.write_backup(state, SETTINGS, folder)
    saved = [w.copy() for w in model.get_weights()]

    train_a_little(model, state, 1)
    with monkeypatch.context() as patch:  # the process dies after TensorFlow wrote, before the rename
        patch.setattr(atomic_files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("power cut")))
        with pytest.raises(OSError):
            backups.write_backup(state, SETTINGS, folder)
    leftover = tmp_path / "backup" / ".partial-crashed"  # what a kill -9 in mid-write leaves
    leftover.mkdir()
    (leftover / "ckpt.index").write_bytes(b"half")

    latest = backups.latest_backup(folder)
    assert os.path.basename(latest) == "epoch-000001" and backups.read_settings(latest) == SETTINGS
    restored_model, restored = new_state()
    backups.restore(restored, latest)
    assert restored.epochs_done == 1 and [row["epoch"] for row in restored.history] == [0]
    assert all(np.array_equal(a, b) for a, b in zip(restored_model.get_weights(), saved))

    train_a_little(restored_model, restored, 1)
    backups.write_backup(restored, SETTINGS, folder)
    assert os.listdir(folder) == ["epoch-000002"]  # the new backup replaced the old one and the leftover


def test_differing_settings_name_each_one_with_both_values():
    stored = {"--seed": 1337, "--epochs": 5, "--augment": True}
    assert backups.differing_settings(stored, dict(stored)) == []
    assert backups.differing_settings(stored, {**stored, "--seed": 7, "--augment": False}) == [
        "--augment (backup True, now False)", "--seed (backup 1337, now 7)"]


def test_every_flag_of_train_py_is_a_stored_setting_or_said_not_to_be():
    args = train.parse_args([])
    flags = {"--" + name.replace("_", "-") for name in vars(args)}
    stored = set(train.run_settings(args, "float32", False, 1, ([], [])))
    assert flags - stored - set(train.NOT_IN_SETTINGS) == set(), "decide: a stored setting, or NOT_IN_SETTINGS"
    assert not stored & set(train.NOT_IN_SETTINGS)
