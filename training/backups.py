"""The per-epoch backup of a training run: everything a resume needs, and the settings it belongs to.

Layout: <output-dir>/backup/epoch-NNNNNN/ holds one TensorFlow checkpoint
(`ckpt.*`: weights, optimizer, early-stopping counters, best weights and the
history) and `settings.json` (the run's settings, see train.run_settings).
Each backup is written into a fresh private folder (tempfile.mkdtemp, so no
planted link can redirect it), flushed to disk, then renamed to its
epoch-NNNNNN name; only after that are older backups deleted.  A crash at any
moment (kill -9, power cut, out of memory) therefore leaves the previous
backup whole, and a folder named epoch-* is always complete.
"""
import hashlib
import json
import os
import shutil

from common.atomic_files import write_folder_atomically
from common.tensorflow_env import tf

CHECKPOINT_PREFIX = "ckpt"
SETTINGS_FILE = "settings.json"
EPOCH_PREFIX = "epoch-"


class TrainingState:
    """Everything an interrupted run needs to go on, in one TF checkpoint.

    Keras' BackupAndRestore keeps only weights and the epoch number; resuming
    here must also bring back the optimizer, the early-stopping counters, the
    best weights so far and the history, all from the same instant, so that
    history.csv holds every epoch exactly once after a kill -9.
    """

    def __init__(self, model, optimizer):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False)
        self.history_json = tf.Variable("[]", dtype=tf.string, trainable=False)
        self.best_weights = [tf.Variable(w, trainable=False) for w in model.get_weights()]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, wait=self.wait,
                                              best_val_loss=self.best_val_loss, history=self.history_json,
                                              best_weights=self.best_weights)

    @property
    def history(self):
        return json.loads(self.history_json.numpy().decode())

    @property
    def epochs_done(self):
        return int(self.epoch.numpy())

    @property
    def epochs_without_improvement(self):
        return int(self.wait.numpy())

    def record(self, row, model):
        """Adds an epoch's history row; returns True if its validation loss is the best so far."""
        improved = row["val_loss"] < float(self.best_val_loss.numpy())
        self.history_json.assign(json.dumps(self.history + [row]))
        self.epoch.assign(row["epoch"] + 1)
        self.wait.assign(0 if improved else self.epochs_without_improvement + 1)
        if improved:
            self.best_val_loss.assign(row["val_loss"])
            for variable, weight in zip(self.best_weights, model.get_weights()):
                variable.assign(weight)
        return improved


def backup_dir_of(output_dir):
    """<output_dir>/backup; ValueError if it is a symbolic link (a write there could land anywhere)."""
    path = os.path.join(output_dir, "backup")
    if os.path.islink(path):
        raise ValueError(f"--output-dir {output_dir}: backup is a symbolic link; remove it")
    return path


def latest_backup(backup_dir):
    """The newest complete epoch-* folder in backup_dir, or None.

    ValueError for a backup of an older train.py (no settings stored with
    it): it cannot be checked against this command, so it is never resumed.
    """
    if not os.path.isdir(backup_dir):
        return None
    names = os.listdir(backup_dir)
    complete = sorted(name for name in names if name.startswith(EPOCH_PREFIX))
    if complete:
        return os.path.join(backup_dir, complete[-1])
    if any(name.startswith(CHECKPOINT_PREFIX) or name == "checkpoint" for name in names):
        raise ValueError(f"{backup_dir} is a backup of an older train.py, without the settings of its run: "
                         f"add --restart to discard it and start afresh")
    return None  # only leftovers of a write that never completed


def read_settings(backup):
    with open(os.path.join(backup, SETTINGS_FILE)) as f:
        return json.load(f)


def restore(state, backup):
    state.checkpoint.restore(os.path.join(backup, CHECKPOINT_PREFIX)).expect_partial()


def differing_settings(stored, current):
    """'name (backup X, now Y)' for each setting whose value differs."""
    return [f"{name} (backup {stored.get(name)!r}, now {current.get(name)!r})"
            for name in sorted(set(stored) | set(current)) if stored.get(name) != current.get(name)]


def write_backup(state, settings, backup_dir):
    """Writes the state and settings as backup_dir/epoch-NNNNNN, then deletes every older backup."""
    os.makedirs(backup_dir, exist_ok=True)
    final = os.path.join(backup_dir, f"{EPOCH_PREFIX}{state.epochs_done:06d}")

    def write(folder):
        state.checkpoint.write(os.path.join(folder, CHECKPOINT_PREFIX))
        with open(os.path.join(folder, SETTINGS_FILE), "w") as f:
            json.dump(settings, f, indent=1, sort_keys=True)

    # replace: an identical backup of this epoch exists only after a crash
    write_folder_atomically(final, write, replace=True, durable=True)
    for name in os.listdir(backup_dir):
        if os.path.join(backup_dir, name) != final:
            shutil.rmtree(os.path.join(backup_dir, name), ignore_errors=True)


def discard(backup_dir):
    shutil.rmtree(backup_dir, ignore_errors=True)


def files_fingerprint(paths):
    """'N files, <hash>' of the files' names and sizes: a change of the data a run trains on."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{os.path.basename(path)}\t{os.path.getsize(path)}\n".encode())
    return f"{len(paths)} files, {digest.hexdigest()[:12]}"
