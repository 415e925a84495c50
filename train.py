"""Train the x4 ESPCN on brain-MRI slices.

usage: python train.py [--data-dir DIR] [--output-dir DIR] [--epochs N] [--batch-size N] ...

Writes <output-dir>/espcn.keras (best validation loss), history.csv, and the
two training plots (psnr.png, loss.png).  With the default --data-dir and no
data there, it first builds the embedded MNI152 sample.  An interrupted run
(Ctrl-C, SIGTERM, kill -9) resumes from its last completed epoch when the same
command is run again.

One training loop serves one device, all local GPUs and many machines: a
custom loop over tf.distribute (strategy.run / strategy.reduce) rather than
model.fit, because Keras 3.15's fit fails under MultiWorkerMirroredStrategy.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import tempfile

import hashlib

import numpy as np

import constants
import dataset
import modules
from cli import OneLineErrorParser, check_output_dir, positive_int, target_size, write_atomically
from tensorflow_env import keras, tf


# --- Command line ------------------------------------------------------------

def non_negative_int(text):
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def fraction(text):
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def upscale_factor(text):
    value = positive_int(text)
    if not 2 <= value <= 8:
        raise argparse.ArgumentTypeError(f"the model can upscale x2 to x8, got {value}")
    return value


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=constants.DATA_DIR, help="AD_NC-style tree with train/ and test/")
    parser.add_argument("--output-dir", default=constants.OUTPUT_DIR, help="where the model, history and plots go")
    parser.add_argument("--epochs", type=positive_int, default=constants.EPOCHS, help="at most this many epochs")
    parser.add_argument("--batch-size", type=positive_int, default=constants.BATCH_SIZE, help="per replica")
    parser.add_argument("--learning-rate", type=positive_float, default=constants.LEARNING_RATE,
                        help="Adam, for one replica; multiplied by the replica count")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default=constants.LR_SCHEDULE,
                        help="cosine decays the rate to 2%% over --epochs")
    parser.add_argument("--patience", type=positive_int, default=constants.PATIENCE,
                        help="epochs without a better validation loss before stopping")
    parser.add_argument("--extra-train-dir", default=None,
                        help="a folder of any images (e.g. scikit-image's samples) added to training, tiled")
    parser.add_argument("--validation-split", type=fraction, default=constants.VALIDATION_SPLIT,
                        help="share of train/ held out for validation")
    parser.add_argument("--target-size", type=target_size, default=constants.TARGET_SIZE,
                        help="slices are padded/cropped to this square size (pixels)")
    parser.add_argument("--seed", type=int, default=constants.SEED, help="fixes the split, crops and augmentation")
    parser.add_argument("--upscale-factor", type=upscale_factor, default=constants.UPSCALE_FACTOR,
                        help="2 to 8; the pretrained model and reported results are x4")
    parser.add_argument("--through-plane-factor", type=upscale_factor, default=None,
                        help="train the through-plane (1-D) model: thick slices of this many fine rows -> fine rows")
    parser.add_argument("--patch-size", type=non_negative_int, default=constants.PATCH_SIZE,
                        help="high-resolution training crop; 0 = whole slices")
    parser.add_argument("--patches-per-image", type=positive_int, default=constants.PATCHES_PER_IMAGE,
                        help="random crops per training slice per epoch")
    parser.add_argument("--pipeline-batches", type=positive_int, default=constants.PIPELINE_PARALLEL_BATCHES,
                        help="training batches the input pipeline prepares in parallel and keeps ready")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=constants.AUGMENT,
                        help="flips, turns, intensity scale/gamma and noise on training crops")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"),
                        default=constants.PRECISION,
                        help="auto: mixed_bfloat16 on CPUs with AVX-512 BF16/AMX, mixed_float16 on GPUs, else float32")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default=constants.JIT,
                        help="XLA-compile the training step; auto = on for float32, off for mixed precision")
    parser.add_argument("--strategy", choices=("auto", "one_device", "mirrored", "multi_worker"),
                        default=constants.STRATEGY, help="multi_worker reads the cluster from TF_CONFIG")
    args = parser.parse_args(argv)
    if args.through_plane_factor:  # rows are cut to a multiple of the factor, so any target size works
        args.upscale_factor = args.through_plane_factor
    elif args.target_size % args.upscale_factor:
        parser.error(f"argument --target-size: {args.target_size} is not divisible by --upscale-factor "
                     f"{args.upscale_factor}")
    return args


# --- Set-up ------------------------------------------------------------------

def make_strategy(name):

    if name == "auto":
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one_device"
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi_worker needs the TF_CONFIG environment variable (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()  # the default: one device, no wrapping


def is_chief(strategy):
    """Worker 0 (or the 'chief' task) writes the real outputs; others write to temp."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def load_data(args):
    """Decoded training, validation and test-free slices; ValueError on bad data."""
    dataset.prepare_data_dir(args.data_dir)
    train, val = dataset.load_train_validation(args.data_dir, args.validation_split, args.seed, args.target_size)
    if len(train.paths) == 0:
        raise ValueError(f"--data-dir {args.data_dir}: no usable training image in train/")
    if args.extra_train_dir:
        extra = load_extra_images(args.extra_train_dir, args.target_size)
        train = dataset.Split(np.concatenate([train.images, extra.images]), train.paths + extra.paths)
    if len(val.paths) == 0:  # tiny sets: validate on the training slices rather than not at all
        print("note: no usable validation image; validating on the training slices")
        val = train
    print(f"{len(train.paths)} training and {len(val.paths)} validation slices from {args.data_dir}")
    return train, val


def load_extra_images(folder, size):
    """Every image under `folder`, tiled into training slices (training only, never validation)."""
    if not os.path.isdir(folder):
        raise ValueError(f"--extra-train-dir {folder}: no such directory")
    extra = dataset.load_slices(dataset.list_images(folder), size, tile=True)
    if not extra.paths:
        raise ValueError(f"--extra-train-dir {folder}: no usable images")
    print(f"{len(extra.paths)} extra training tiles from {len(set(extra.paths))} images in {folder}")
    return extra


# --- Outputs -----------------------------------------------------------------

HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "val_psnr", "val_ssim", "learning_rate")


def save_history_csv(rows, path):
    def write(tmp_path):
        with open(tmp_path, "w") as out:
            out.write(",".join(HISTORY_COLUMNS) + "\n")
            for row in rows:
                out.write(",".join(str(row[name]) for name in HISTORY_COLUMNS) + "\n")
    write_atomically(path, write)


def save_training_plots(rows, output_dir):
    """The seed report's two plots: PSNR per epoch; loss and val_loss per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    for name, series, ylabel in (("psnr.png", ("val_psnr",), "mean PSNR (dB)"),
                                 ("loss.png", ("loss", "val_loss"), "MSE loss")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in series:
            ax.plot(epochs, [row[key] for row in rows], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        write_atomically(os.path.join(output_dir, name), lambda tmp: fig.savefig(tmp, dpi=110))
        plt.close(fig)


# --- Training ----------------------------------------------------------------

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

    def record(self, row, model, improved, wait):
        self.history_json.assign(json.dumps(self.history + [row]))
        self.epoch.assign(row["epoch"] + 1)
        self.wait.assign(wait)
        if improved:
            self.best_val_loss.assign(row["val_loss"])
            for variable, weight in zip(self.best_weights, model.get_weights()):
                variable.assign(weight)


def make_optimizer(args, steps_per_epoch, replicas, policy):

    learning_rate = args.learning_rate * replicas  # linear scaling with the global batch
    if args.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, args.epochs * steps_per_epoch), alpha=0.02)
    optimizer = keras.optimizers.Adam(learning_rate)
    if policy == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def weights_fingerprint(model):
    """A short hash of all weights, to check that workers ended in the same place."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()[:16]


def current_learning_rate(optimizer):
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def distribute(strategy, data):

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(data.with_options(options))


def plan_batches(args, n_images, replicas):
    """(crop size, per-replica batch, global batch, steps per epoch) for this data."""
    patch = dataset.effective_patch(args.patch_size, args.target_size, args.upscale_factor)
    n_examples = n_images * (args.patches_per_image if patch else 1)
    if n_examples < replicas:
        raise ValueError(f"--data-dir {args.data_dir}: {n_examples} training examples for {replicas} replicas")
    per_replica = min(args.batch_size, n_examples // replicas)
    if per_replica < args.batch_size:
        print(f"note: only {n_examples} training examples; batch size {per_replica} per replica")
    global_batch = per_replica * replicas
    return patch, per_replica, global_batch, n_examples // global_batch


def run_epoch(epoch, train_step, batches, steps, callbacks, psnr_callback, optimizer):
    """`steps` training batches from the iterator `batches`, then validation; returns the history row."""
    callbacks.on_epoch_begin(epoch)
    total = 0.0
    for step in range(steps):
        total += float(train_step(next(batches)))
        callbacks.on_train_batch_end(step, {"loss": total / (step + 1)})
    callbacks.on_epoch_end(epoch, {"loss": total / steps})  # the PSNR callback validates here
    val = psnr_callback.scores
    return {"epoch": epoch, "loss": total / steps, "val_loss": val["loss"], "val_psnr": val["psnr"],
            "val_ssim": val["ssim"], "learning_rate": current_learning_rate(optimizer)}


def finish(model, state, rows, model_path, output_dir):
    """Keeps the best epoch's weights and writes the model, history and plots."""
    model.set_weights([w.numpy() for w in state.best_weights])
    write_atomically(model_path, model.save)
    save_history_csv(rows, os.path.join(output_dir, "history.csv"))
    save_training_plots(rows, output_dir)
    best = min(rows, key=lambda row: row["val_loss"])
    print(f"best epoch {best['epoch'] + 1}: val_loss {best['val_loss']:.5f}, "
          f"val PSNR {best['val_psnr']:.2f} dB, val SSIM {best['val_ssim']:.4f}")
    print(f"weights fingerprint: {weights_fingerprint(model)}")  # equal on every worker of one run


def train(args):
    """Runs (or resumes) training; returns the history rows."""


    strategy = make_strategy(args.strategy)
    chief = is_chief(strategy)
    if chief:
        check_output_dir(args.output_dir)
    print(f"strategy: {type(strategy).__name__}, replicas in sync: {strategy.num_replicas_in_sync}")
    policy = modules.choose_precision(args.precision)
    keras.mixed_precision.set_global_policy(policy)
    jit = modules.use_xla(args.jit, policy)
    print(f"precision: {policy}, XLA: {'on' if jit else 'off'}")
    # Only the chief writes into --output-dir; the others write to a folder of their own, deleted at the end.
    output_dir = args.output_dir if chief else tempfile.mkdtemp(prefix="espcn_worker_")
    try:
        return train_into(args, strategy, policy, jit, output_dir)
    finally:
        if not chief:
            shutil.rmtree(output_dir, ignore_errors=True)


def build_model(args):
    """The ESPCN to train: x upscale in both directions, or the 1-D through-plane one."""
    if args.through_plane_factor:
        return modules.get_model_1d(args.through_plane_factor)
    return modules.get_model(args.upscale_factor)


def train_into(args, strategy, policy, jit, output_dir):


    train_set, val_set = load_data(args)
    replicas = strategy.num_replicas_in_sync
    patch, per_replica, global_batch, steps = plan_batches(args, len(train_set.images), replicas)
    with strategy.scope():
        model = build_model(args)
        optimizer = make_optimizer(args, steps, replicas, policy)
        optimizer.build(model.trainable_variables)
    state = TrainingState(model, optimizer)
    backup_dir = os.path.join(output_dir, "backup")
    manager = tf.train.CheckpointManager(state.checkpoint, backup_dir, max_to_keep=1)
    restore_from = tf.train.latest_checkpoint(os.path.join(args.output_dir, "backup"))  # every worker: the chief's
    if restore_from:
        state.checkpoint.restore(restore_from).expect_partial()
        print(f"resumed from {restore_from}: continuing at epoch {int(state.epoch.numpy()) + 1} of {args.epochs}")

    train_step = modules.make_train_step(model, optimizer, strategy, jit)
    psnr_callback = modules.PSNRCallback(
        dataset.make_eval_dataset(val_set.images, per_replica, args.upscale_factor,
                                  thick_slices=bool(args.through_plane_factor)).cache())
    callbacks = keras.callbacks.CallbackList([psnr_callback], add_progbar=True, model=model,
                                             verbose=1 if output_dir == args.output_dir else 0,
                                             epochs=args.epochs, steps=steps)
    model_path = os.path.join(output_dir, constants.MODEL_FILENAME)
    first_epoch = int(state.epoch.numpy())
    batches = iter(distribute(strategy, dataset.make_training_dataset(
        train_set.images, global_batch, args.upscale_factor, patch, args.patches_per_image, args.augment,
        seed=args.seed, epochs=max(0, args.epochs - first_epoch), first_epoch=first_epoch,
        parallel=args.pipeline_batches, thick_slices=bool(args.through_plane_factor))))
    while int(state.epoch.numpy()) < args.epochs and int(state.wait.numpy()) < args.patience:
        epoch = int(state.epoch.numpy())
        row = run_epoch(epoch, train_step, batches, steps, callbacks, psnr_callback, optimizer)
        improved = row["val_loss"] < float(state.best_val_loss.numpy())
        if improved:
            write_atomically(model_path, model.save)
        state.record(row, model, improved, 0 if improved else int(state.wait.numpy()) + 1)
        manager.save()  # weights, optimizer, counters and history of this epoch, in one checkpoint
        save_history_csv(state.history, os.path.join(output_dir, "history.csv"))
    if int(state.wait.numpy()) >= args.patience:
        print(f"early stopping: no better validation loss for {args.patience} epochs")
    rows = state.history
    finish(model, state, rows, model_path, output_dir)
    shutil.rmtree(backup_dir, ignore_errors=True)  # finished: nothing to resume
    if output_dir == args.output_dir:
        print(f"wrote {model_path}, history.csv, psnr.png and loss.png in {output_dir}")
    return rows


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # same clean stop as Ctrl-C; the backup holds the last epoch


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        train(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last completed epoch",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
