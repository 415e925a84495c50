"""Train the x4 ESPCN (or, with --network quality, the quality network) on brain-MRI slices.

usage: python train.py [--data-dir DIR] [--output-dir DIR] [--epochs N] [--batch-size N] ...

Writes <output-dir>/espcn.keras (best validation loss; quality.keras with
--network quality, <network>_through_x<F>.keras with --through-plane-factor
F; predict.py prefers an in-plane one there to the shipped models, and takes a
through-plane one with --model), history.csv, and the
two training plots (psnr.png, loss.png).  With the default --data-dir and no
data there, it first builds the embedded MNI152 sample.  An interrupted run
(Ctrl-C, SIGTERM, kill -9) resumes from its last completed epoch when the same
command is run again; a different command is refused (the backup stores the
run's settings) unless --restart discards the backup.

One training loop serves one device, all local GPUs and many machines: a
custom loop over tf.distribute (strategy.run / strategy.reduce) rather than
model.fit, because Keras 3.15's fit fails under MultiWorkerMirroredStrategy.
"""
import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

from training.stopping import StopRequest, TrainingStopped

# Stops are handled from a run's first moment, before the imports below, which
# take seconds (TensorFlow): a SIGTERM or Ctrl-C during them is as clean as any other.
STOP = StopRequest()
if __name__ == "__main__":
    STOP.install()

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from common.atomic_files import write_atomically  # noqa: E402
from common import model_files  # noqa: E402
from common.cli import (OneLineErrorParser, check_output_dir, filter_counts, positive_float, positive_int,  # noqa: E402
                        target_size, upscale_factor)
import constants  # noqa: E402
import dataset  # noqa: E402
import modules  # noqa: E402
from training import backups  # noqa: E402
from training.backups import TrainingState  # noqa: E402
from training import training_logs  # noqa: E402
from common.tensorflow_env import keras, tf  # noqa: E402


# --- Command line ------------------------------------------------------------

def non_negative_int(text):
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def fraction(text):
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
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
    parser.add_argument("--extra-train-dir", nargs="+", default=None, metavar="DIR",
                        help="folders of any images (e.g. scikit-image's samples) added to training, tiled")
    parser.add_argument("--loss", choices=("mse", "l1"), default=constants.LOSS, help="per-pixel training loss")
    parser.add_argument("--validation-split", type=fraction, default=constants.VALIDATION_SPLIT,
                        help="share of train/'s groups (file name up to the last '_') held out for validation, "
                             "when the tree has no validation/ folder")
    parser.add_argument("--target-size", type=target_size, default=constants.TARGET_SIZE,
                        help="slices are padded/cropped to this square size (pixels)")
    parser.add_argument("--seed", type=int, default=constants.SEED, help="fixes the split, crops and augmentation")
    parser.add_argument("--upscale-factor", type=upscale_factor, default=constants.UPSCALE_FACTOR,
                        help="2 to 8; the pretrained model and reported results are x4")
    parser.add_argument("--network", choices=constants.NETWORKS, default=constants.SEED_NETWORK,
                        help="espcn: the seed's ESPCN (3 convolutions); quality: the residual network beside it, "
                             "which predict.py runs on your scans by default (README, Quality network); the "
                             "model is written as <output-dir>/<network>.keras (<network>_through_x<F>.keras)")
    parser.add_argument("--quality-filters", type=positive_int, default=constants.QUALITY_FILTERS,
                        help="--network quality: the width of its body")
    parser.add_argument("--blocks", type=positive_int, default=constants.QUALITY_BLOCKS,
                        help="--network quality: its residual blocks")
    parser.add_argument("--filters", type=filter_counts, default=constants.FILTERS, metavar="N,N,N",
                        help="the three feature convolutions' filters (the seed's ESPCN: 64,64,32); a wider model is "
                             "slower to train and to use")
    parser.add_argument("--through-plane-factor", type=upscale_factor, default=None,
                        help="train the through-plane (1-D) model: thick slices of this many fine rows -> fine rows")
    parser.add_argument("--thickness-ratios", type=positive_float, nargs="+", default=[1.0], metavar="R",
                        help="through-plane: each batch's thick slices are R x their spacing thick, R drawn from "
                             "these (below 1: a gap between slices, as in clinical 2D scans)")
    parser.add_argument("--init-model", default=None, metavar="PATH",
                        help="start from this .keras model's weights (fine-tuning; same kind, factor and filters)")
    parser.add_argument("--init-body", default=None, metavar="PATH",
                        help="--network quality: start its residual body from this quality model of any factor or "
                             "direction (the in-plane one for a through-plane model); the sub-pixel layer starts at "
                             "nearest-neighbour")
    parser.add_argument("--patch-size", type=non_negative_int, default=constants.PATCH_SIZE,
                        help="high-resolution training crop; 0 = whole slices")
    parser.add_argument("--patches-per-image", type=positive_int, default=constants.PATCHES_PER_IMAGE,
                        help="random crops per training slice per epoch")
    parser.add_argument("--pipeline-batches", type=positive_int, default=constants.PIPELINE_PARALLEL_BATCHES,
                        help="training batches the input pipeline prepares in parallel and keeps ready")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=constants.AUGMENT,
                        help="flips, turns, intensity scale/gamma and noise on training crops")
    parser.add_argument("--precision", choices=constants.PRECISIONS,
                        default=constants.PRECISION,
                        help="auto: mixed_bfloat16 where it is faster (AMX; AMD's AVX-512 BF16), mixed_float16 "
                             "on GPUs, else float32")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default=constants.JIT,
                        help="XLA-compile the training step; auto = on for float32, off for mixed precision")
    parser.add_argument("--strategy", choices=("auto", "one_device", "mirrored", "multi_worker"),
                        default=constants.STRATEGY, help="multi_worker reads the cluster from TF_CONFIG")
    parser.add_argument("--restart", action="store_true",
                        help="discard the backup of an interrupted run in --output-dir and start afresh")
    args = parser.parse_args(argv)
    if args.through_plane_factor:  # rows are cut to a multiple of the factor, so any target size works
        args.upscale_factor = args.through_plane_factor
    elif args.target_size % args.upscale_factor:
        parser.error(f"argument --target-size: {args.target_size} is not divisible by --upscale-factor "
                     f"{args.upscale_factor}")
    return args


# --- Set-up ------------------------------------------------------------------

@dataclass
class Run:
    """What the set-up decided for this process: where it trains, how, and from which backup."""
    strategy: object
    policy: str
    jit: bool
    chief: bool                    # the chief writes --output-dir and shows progress
    output_dir: str                # --output-dir on the chief, a private temporary folder on other workers
    settings: dict                 # stored with every backup; see run_settings
    resume_from: str = None        # the backup folder to continue from, if any

    @property
    def model_path(self):
        """Where the trained model goes: <output-dir>/<network>.keras, or <network>_through_x<F>.keras."""
        return os.path.join(self.output_dir, model_files.trained_name(self.settings["--network"],
                                                                      self.settings["--through-plane-factor"]))

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync


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


# Flags that are not in run_settings as spelled, and why.  A new flag goes
# either into run_settings or here (tests/test_backups.py checks it).
NOT_IN_SETTINGS = {
    "--output-dir": "where the backup is",
    "--patience": "it only decides when to stop, never how an epoch trains",
    "--pipeline-batches": "parallelism, which never changes the data (tests/test_dataset.py)",
    "--strategy": "compared as the number of replicas it gives",
    "--restart": "it discards the backup",
}


def run_settings(args, policy, jit, replicas, split):
    """Everything that changes what a run trains, by flag name; a backup resumes only under equal settings."""
    extra = [path for folder in args.extra_train_dir or () for path in dataset.list_images(folder)]
    return {
        "--data-dir": os.path.abspath(args.data_dir),
        "data files": backups.files_fingerprint(split[0] + split[1]),  # the split follows from them and the seed
        "--validation-split": ("validation/ folder" if dataset.validation_source(args.data_dir) == "folder"
                               else args.validation_split),
        "--extra-train-dir": [os.path.abspath(folder) for folder in args.extra_train_dir or ()] or None,
        "extra training files": backups.files_fingerprint(extra) if extra else None,
        "--seed": args.seed, "--upscale-factor": args.upscale_factor, "--target-size": args.target_size,
        "--through-plane-factor": args.through_plane_factor, "--filters": list(args.filters),
        "--network": args.network,
        "--quality-filters": args.quality_filters if args.network == "quality" else None,
        "--blocks": args.blocks if args.network == "quality" else None,
        "--thickness-ratios": list(args.thickness_ratios) if args.thickness_ratios != [1.0] else None,
        "--init-model": backups.files_fingerprint([args.init_model]) if args.init_model else None,
        "--init-body": backups.files_fingerprint([args.init_body]) if args.init_body else None,
        "--patch-size": args.patch_size, "--patches-per-image": args.patches_per_image,
        "--augment": args.augment, "--batch-size": args.batch_size, "replicas": replicas,
        "--loss": args.loss, "--learning-rate": args.learning_rate, "--lr-schedule": args.lr_schedule, "--epochs": args.epochs,
        "--precision": policy, "--jit": "on" if jit else "off",  # as resolved: auto is what it picks
    }


def backup_to_resume(args, settings, chief):
    """The backup this command continues from, or None; ValueError naming the settings if it belongs to another run.

    Every worker reads the chief's backup.  --restart discards it (the chief
    deletes it; the other workers just do not read it).
    """
    backup_dir = backups.backup_dir_of(args.output_dir)
    if args.restart:
        if chief and os.path.exists(backup_dir):
            backups.discard(backup_dir)
            print(f"--restart: discarded the backup in {backup_dir}")
        return None
    latest = backups.latest_backup(backup_dir)
    if latest is None:
        return None
    try:
        stored = backups.read_settings(latest)
    except (OSError, ValueError) as error:
        raise ValueError(f"{latest}: unreadable settings ({error}); add --restart to discard this backup") from None
    if stored.get("--network") is None:  # backups written before the network was always stored: the ESPCN's
        stored["--network"] = "espcn"
    differences = backups.differing_settings(stored, settings)
    if differences:
        raise ValueError(f"--output-dir {args.output_dir} holds the backup of another run; this command differs in "
                         f"{'; '.join(differences)}: run that run's command to resume it, or add --restart to "
                         f"discard its backup")
    return latest


def set_up(args):
    """Strategy, precision, data dir, settings and the backup to resume; ValueError for anything wrong.

    Nothing in --output-dir is touched before the backup's settings are checked.
    """
    strategy = make_strategy(args.strategy)
    chief = is_chief(strategy)
    if chief:
        check_output_dir(args.output_dir)
    print(f"strategy: {type(strategy).__name__}, replicas in sync: {strategy.num_replicas_in_sync}")
    policy = modules.choose_precision(args.precision)  # passed to every model built, never set globally
    jit = modules.use_xla(args.jit, policy)
    print(f"precision: {policy}, XLA: {'on' if jit else 'off'}")
    for folder in args.extra_train_dir or ():
        if not os.path.isdir(folder):
            raise ValueError(f"--extra-train-dir {folder}: no such directory")
    for flag, path in (("--init-model", args.init_model), ("--init-body", args.init_body)):
        if path and not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file")
    if args.init_body and (args.init_model or args.network != "quality"):
        raise ValueError("--init-body starts a new quality network's body: give it with --network quality and "
                         "without --init-model")
    dataset.prepare_data_dir(args.data_dir)
    split = dataset.train_validation_paths(args.data_dir, args.validation_split, args.seed)
    settings = run_settings(args, policy, jit, strategy.num_replicas_in_sync, split)
    resume_from = backup_to_resume(args, settings, chief)
    # Only the chief writes into --output-dir; the others write to a folder of their own, deleted at the end.
    output_dir = args.output_dir if chief else tempfile.mkdtemp(prefix="espcn_worker_")
    return Run(strategy, policy, jit, chief, output_dir, settings, resume_from), split


def load_data(args, split):
    """Decoded training and validation slices of the (training, validation) paths; ValueError on bad data."""
    train = dataset.load_slices(split[0], args.target_size)
    val = dataset.load_slices(split[1], args.target_size)
    if len(train.paths) == 0:
        raise ValueError(f"--data-dir {args.data_dir}: no usable training image in train/")
    for folder in args.extra_train_dir or ():
        extra = dataset.load_extra_images(folder, args.target_size)
        train = dataset.Split(np.concatenate([train.images, extra.images]), train.paths + extra.paths)
    if len(val.paths) == 0:  # tiny sets: validate on the training slices rather than not at all
        print("note: no usable validation image; validating on the training slices")
        val = train
    print(f"{len(train.paths)} training and {len(val.paths)} validation slices from {args.data_dir}")
    return train, val


# --- Outputs -----------------------------------------------------------------

HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "val_psnr", "val_ssim", "learning_rate")


def save_history_csv(rows, path):
    def write(tmp_path):
        with open(tmp_path, "w") as out:
            out.write(",".join(HISTORY_COLUMNS) + "\n")
            for row in rows:
                out.write(",".join(str(row[name]) for name in HISTORY_COLUMNS) + "\n")
    write_atomically(path, write)


def save_training_plots(rows, output_dir, loss_name=constants.LOSS):
    """The seed report's two plots: PSNR per epoch; loss and val_loss per epoch.

    val_loss is always the mean squared error; the training loss is --loss's.
    """
    epochs = [row["epoch"] for row in rows]
    loss_label = "MSE loss" if loss_name == "mse" else "loss (training: mean absolute error; val_loss: MSE)"
    for name, series, ylabel in (("psnr.png", ("val_psnr",), "mean PSNR (dB)"),
                                 ("loss.png", ("loss", "val_loss"), loss_label)):
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for key in series:
            ax.plot(epochs, [row[key] for row in rows], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        write_atomically(os.path.join(output_dir, name), lambda tmp: fig.savefig(tmp, dpi=110))


# --- Training ----------------------------------------------------------------

@dataclass
class BatchPlan:
    patch: int            # high-resolution crop size, 0 = whole slices
    per_replica: int      # batch per replica
    global_batch: int
    steps: int            # training steps per epoch


def plan_batches(args, n_images, replicas):
    """The crop size, batch sizes and steps per epoch for this data."""
    patch = dataset.effective_patch(args.patch_size, args.target_size, args.upscale_factor)
    n_examples = n_images * (args.patches_per_image if patch else 1)
    if n_examples < replicas:
        raise ValueError(f"--data-dir {args.data_dir}: {n_examples} training examples for {replicas} replicas")
    per_replica = min(args.batch_size, n_examples // replicas)
    if per_replica < args.batch_size:
        print(f"note: only {n_examples} training examples; batch size {per_replica} per replica")
    global_batch = per_replica * replicas
    return BatchPlan(patch, per_replica, global_batch, n_examples // global_batch)


def make_optimizer(args, steps_per_epoch, replicas, policy):
    learning_rate = args.learning_rate * replicas  # linear scaling with the global batch
    if args.lr_schedule == "cosine":
        learning_rate = modules.cosine_schedule(learning_rate, args.epochs * steps_per_epoch)
    return modules.adam(learning_rate, policy)


def build_model(args, run, plan):
    """The model (x upscale in both directions, or the 1-D through-plane one) and its optimizer, made (and the
    optimizer's slots built) under the strategy's scope."""
    with run.strategy.scope():
        model = modules.build_network(
            args.network, args.through_plane_factor or args.upscale_factor, bool(args.through_plane_factor),
            filters=args.quality_filters if args.network == "quality" else args.filters, blocks=args.blocks,
            dtype=run.policy)
        if args.init_model:
            start = read_init_model(args.init_model)
            try:
                modules.copy_weights(start, model)
            except ValueError as error:
                raise ValueError(f"--init-model {args.init_model}: {error}") from None
        if args.init_body:
            body = read_init_model(args.init_body, "--init-body")
            try:
                modules.copy_body(body, model)
            except ValueError as error:
                raise ValueError(f"--init-body {args.init_body}: {error}") from None
        optimizer = make_optimizer(args, plan.steps, run.replicas, run.policy)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def read_init_model(path, flag="--init-model"):
    """The .keras model of `flag` (safe mode; set_up checked that it exists); ValueError naming the flag."""
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # corrupt archives fail in many ways inside Keras
        raise ValueError(f"{flag} {path}: cannot be loaded ({type(error).__name__})") from None


def restore(state, run, epochs):
    if run.resume_from:
        backups.restore(state, run.resume_from)
        print(f"resumed from {run.resume_from}: continuing at epoch {state.epochs_done + 1} of {epochs}")


def training_batches(args, run, images, plan, first_epoch):
    """An iterator over every remaining epoch's distributed training batches (one pipeline for the run)."""
    data = dataset.make_training_dataset(
        images, plan.global_batch, factor=args.upscale_factor, patch=plan.patch,
        patches_per_image=args.patches_per_image, augment=args.augment, seed=args.seed, epochs=max(0, args.epochs - first_epoch), first_epoch=first_epoch,
        parallel=args.pipeline_batches, thick_slices=bool(args.through_plane_factor),
        thickness_ratios=tuple(args.thickness_ratios))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return iter(run.strategy.experimental_distribute_dataset(data.with_options(options)))


def make_callbacks(args, run, model, val_images, plan):
    """The progress bar and the PSNR callback, which validates at each epoch's end."""
    psnr_callback = modules.PSNRCallback(
        dataset.make_eval_dataset(val_images, plan.per_replica, args.upscale_factor,
                                  thick_slices=bool(args.through_plane_factor)).cache())
    callbacks = keras.callbacks.CallbackList([psnr_callback], add_progbar=True, model=model,
                                             verbose=1 if run.chief else 0, epochs=args.epochs, steps=plan.steps)
    return callbacks, psnr_callback


def current_learning_rate(optimizer):
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def run_epoch(epoch, train_step, batches, steps, callbacks, psnr_callback, optimizer, stop):
    """`steps` training batches, then validation; returns the history row.

    A stop request ends the epoch before its next step (the backup holds the
    epoch before); one that comes during validation lets the epoch finish and
    be saved.
    """
    callbacks.on_epoch_begin(epoch)
    stop.phase = f"the training steps of epoch {epoch + 1}"
    total = 0.0
    for step in range(steps):
        stop.check()
        total += float(train_step(next(batches)))
        callbacks.on_train_batch_end(step, {"loss": total / (step + 1)})
    stop.phase = f"the validation of epoch {epoch + 1}"
    callbacks.on_epoch_end(epoch, {"loss": total / steps})  # the PSNR callback validates here
    val = psnr_callback.scores
    return {"epoch": epoch, "loss": total / steps, "val_loss": val["loss"], "val_psnr": val["psnr"],
            "val_ssim": val["ssim"], "learning_rate": current_learning_rate(optimizer)}


def save_epoch(state, row, model, run, stop, log, validation):
    """The best model (if this epoch is), the backup, history.csv, then the TensorBoard log.

    Each is written whole or not at all; the log comes after the backup, so a
    resumed run never logs an epoch twice.
    """
    stop.phase = f"saving epoch {row['epoch'] + 1}"
    if state.record(row, model):
        write_atomically(run.model_path, model.save)
    backups.write_backup(state, run.settings, backups.backup_dir_of(run.output_dir))
    save_history_csv(state.history, os.path.join(run.output_dir, "history.csv"))
    log.write_epoch(row, model, validation)


def weights_fingerprint(model):
    """A short hash of all weights, to check that workers ended in the same place."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()[:16]


def finish(model, state, args, run):
    """Keeps the best epoch's weights, writes the model, history and plots, and drops the backup."""
    if state.epochs_without_improvement >= args.patience:
        print(f"early stopping: no better validation loss for {args.patience} epochs")
    rows = state.history
    model_path = run.model_path
    model.set_weights([w.numpy() for w in state.best_weights])
    write_atomically(model_path, model.save)
    save_history_csv(rows, os.path.join(run.output_dir, "history.csv"))
    save_training_plots(rows, run.output_dir, args.loss)
    best = min(rows, key=lambda row: row["val_loss"])
    print(f"best epoch {best['epoch'] + 1}: val_loss {best['val_loss']:.5f}, "
          f"val PSNR {best['val_psnr']:.2f} dB, val SSIM {best['val_ssim']:.4f}")
    print(f"weights fingerprint: {weights_fingerprint(model)}")  # equal on every worker of one run
    backups.discard(backups.backup_dir_of(run.output_dir))  # finished: nothing to resume
    if run.chief:
        print(f"wrote {model_path}, history.csv, psnr.png and loss.png in {run.output_dir}")
    return rows


def train_into(args, run, split, stop):
    """The training run, top to bottom: data, model, restore, pipeline, the epoch loop, finish."""
    train_set, val_set = load_data(args, split)
    stop.check()  # reading a large tree takes a while; nothing is written yet
    plan = plan_batches(args, len(train_set.images), run.replicas)
    model, optimizer = build_model(args, run, plan)
    state = TrainingState(model, optimizer)
    restore(state, run, args.epochs)
    train_step = modules.make_train_step(model, optimizer, run.strategy, run.jit, args.loss)
    batches = training_batches(args, run, train_set.images, plan, first_epoch=state.epochs_done)
    callbacks, psnr_callback = make_callbacks(args, run, model, val_set.images, plan)
    log = training_logs.TrainingLog(run.output_dir, run.chief)
    stop.check()
    while state.epochs_done < args.epochs and state.epochs_without_improvement < args.patience:
        row = run_epoch(state.epochs_done, train_step, batches, plan.steps, callbacks, psnr_callback, optimizer,
                        stop)
        save_epoch(state, row, model, run, stop, log, psnr_callback.dataset)
        stop.check()  # the epoch is saved: a safe point
    return finish(model, state, args, run)


def train(args, stop=None):
    """Runs (or resumes) training; returns the history rows.  Raises TrainingStopped after a stop request."""
    stop = stop or StopRequest()
    run, split = set_up(args)
    try:
        return train_into(args, run, split, stop)
    finally:
        if not run.chief:  # a worker's private folder
            shutil.rmtree(run.output_dir, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    STOP.install()
    try:
        train(args, STOP)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        print(f"\ninterrupted ({stopped}): run the same command again to resume from the last completed epoch",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
