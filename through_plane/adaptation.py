"""Per-volume adaptation (SMORE's idea): the pretrained 1-D model fine-tuned on the volume's own planes.

The volume's fine in-plane planes, made thick along one in-plane direction by the acquisition's own
slice profile, are the same kind of training pair as the planes across its slices; the model trains on
them for a number of steps set by the volume (adaptation_steps), every draw seeded, and keeps a share of
the change (keep_share_of_change).  The time budget only caps it.
"""
import time

import numpy as np

import constants
import modules
from common import slice_profiles
from common.schedules import cosine_factor
from common.tensorflow_env import keras, tf


class PlaneCrops:
    """Random (thick, fine) training crops from the fine in-plane planes of a [0, 1] volume.

    Each crop is square (a multiple of the factor a side), centred on a tissue
    voxel, turned by one of the 8 flips/90-degree turns, and made thick along
    its rows by the acquisition's own slice profile (slices `factor` rows
    apart, `thickness_ratio` x `factor` rows thick: a gap below 1): the same
    kind of pair as the planes across the slices will be.
    """

    def __init__(self, planes, factor, thickness_ratio=1.0, patch=constants.ADAPT_PATCH,
                 profile=constants.SLICE_PROFILE, seed=0):
        self.planes, self.factor = planes, factor
        self.size = max(factor, min(patch, *planes.shape[1:]) // factor * factor)
        self.weights = slice_profiles.regular_weights(self.size // factor, factor, thickness_ratio,
                                                      profile).astype(np.float32)
        tissue = np.argwhere(planes > 0.1)
        self.centres = tissue if len(tissue) else np.argwhere(np.ones(planes.shape, bool))
        self.rng = np.random.default_rng(seed)

    def batch(self, count, rng=None):
        """(thick (count, size/F, size, 1), fine (count, size, size, 1)) float32 arrays, drawn with `rng`
        (default: the crops' own random stream)."""
        rng = self.rng if rng is None else rng
        fine = np.empty((count, self.size, self.size), np.float32)
        for i, (index, row, col) in enumerate(self.centres[rng.integers(len(self.centres), size=count)]):
            top = int(np.clip(row - self.size // 2, 0, self.planes.shape[1] - self.size))
            left = int(np.clip(col - self.size // 2, 0, self.planes.shape[2] - self.size))
            crop = self.planes[index, top:top + self.size, left:left + self.size]
            turn = rng.integers(8)
            crop = np.rot90(crop, turn % 4)
            fine[i] = crop[::-1] if turn >= 4 else crop
        thick = np.einsum("tr,nrc->ntc", self.weights, fine)
        return thick[..., None], fine[..., None]


def adaptation_steps(working_voxels, settings):
    """How many steps adaptation takes on a volume whose working output has `working_voxels` voxels.

    settings.steps for volumes up to constants.ADAPT_FULL_VOXELS; larger ones,
    whose inference takes longer, proportionally fewer (at least
    constants.ADAPT_MIN_SHARE of them).  A number from the volume alone, never
    from the clock, so a run repeats exactly on any machine and at any load.
    """
    share = min(1.0, max(constants.ADAPT_MIN_SHARE, constants.ADAPT_FULL_VOXELS / max(1, working_voxels)))
    return max(1, int(round(settings.steps * share)))


def adapt(start, planes, factor, thickness_ratio, *, steps, deadline, settings, precision, progress=None,
          began=None):
    """The through-plane model fine-tuned for `steps` steps on the fine in-plane planes of a [0, 1] volume.

    It trains with train.py's own step (modules.make_train_step) under
    `precision` (a --precision value: auto is bfloat16 on CPUs with AVX-512
    BF16 or AMX, where a step on 16 crops of 64x64 took 26 ms against 29-50 ms
    in float32 on the 2-core AMD EPYC).  Every random draw comes from
    settings.seed, and the learning rate decays by a cosine over the steps
    (common.schedules), so with TensorFlow's ops deterministic (the caller's
    common.tensorflow_env.deterministic_ops) the result depends on the volume
    and the settings alone.

    Args:
        start: the model to start from (its weights), or None to train from scratch.
        planes: (n, h, w) float32 planes across the slice axis (each fine in both directions).
        factor: the model's factor F; thickness_ratio: slice thickness / spacing (below 1: a gap).
        steps: training steps (adaptation_steps).
        deadline: time.monotonic() past which training stops anyway (the time budget: a cap, which the
            caller reports, since the result then depends on the machine's speed).
        settings: the run's Settings (slice profile, seed, crops per step, learning rate, early stop).
        progress: a tqdm bar counting seconds since `began`, or None.
    Training stops early when the model's loss on a fixed set of the volume's
    own crops (drawn with a random stream of their own from the same planes, so
    a check of fit to this volume rather than held-out data) has not
    improved by ADAPT_MIN_GAIN for settings.patience checks of ADAPT_CHECK_STEPS
    steps each; the weights of the best check are kept.

    Of the change from `start`, settings.keep is kept (keep_share_of_change).

    Returns:
        (model, number of training steps, why it stopped: "validation", "time" or "steps").
    """
    policy = modules.choose_precision(precision)
    keras.utils.set_random_seed(settings.seed)  # a model trained from scratch starts from the same weights
    # a copy of the starting network (ESPCN or quality) to train, or a fresh ESPCN
    model = modules.inference_model(start, precision) if start is not None else \
        modules.get_model_1d(factor, dtype=policy)
    base_rate = settings.learning_rate if start is not None else constants.ADAPT_SCRATCH_LEARNING_RATE
    optimizer = modules.adam(base_rate, policy)
    step = modules.make_train_step(model, optimizer, tf.distribute.get_strategy(), jit=False)
    crops = PlaneCrops(planes, factor, thickness_ratio, profile=settings.profile, seed=settings.seed)
    validation = tuple(tf.constant(array) for array in crops.batch(constants.ADAPT_VALIDATION_CROPS,
                                                                   np.random.default_rng(settings.seed + 1)))
    best, best_weights, stale = float(crop_loss(model, *validation)), model.get_weights(), 0
    began = time.monotonic() if began is None else began
    done = 0
    while done < steps and stale < settings.patience and time.monotonic() < deadline:
        optimizer.learning_rate.assign(base_rate * cosine_factor(done / steps))
        step(tuple(tf.constant(array) for array in crops.batch(settings.batch_size or constants.ADAPT_BATCH_SIZE)))
        done += 1
        if done % constants.ADAPT_CHECK_STEPS == 0:
            loss = float(crop_loss(model, *validation))
            if loss < best * (1.0 - constants.ADAPT_MIN_GAIN):
                best, best_weights, stale = loss, model.get_weights(), 0
            else:
                stale += 1
        advance_to(progress, began)
    if done % constants.ADAPT_CHECK_STEPS and float(crop_loss(model, *validation)) < best:
        best_weights = model.get_weights()  # the steps since the last check (all of them, on a short run)
    model.set_weights(best_weights if start is None else
                      keep_share_of_change(start.get_weights(), best_weights, settings.keep))
    why = "validation" if stale >= settings.patience else "steps" if done >= steps else "time"
    return modules.inference_model(model, precision), done, why


def keep_share_of_change(start, adapted, keep):
    """Weights `keep` of the way from `start` to `adapted` (lists of arrays), each in the adapted weight's type."""
    if keep is None or keep == 1.0:
        return adapted
    kept = []
    for s, a in zip(start, adapted):
        s, a = np.asarray(s, np.float32), np.asarray(a)
        kept.append((s + keep * (a.astype(np.float32) - s)).astype(a.dtype))
    return kept


@tf.function(reduce_retracing=True)
def crop_loss(model, thick, fine):
    """Mean squared error of the model on (thick, fine) crops."""
    return tf.reduce_mean(tf.square(tf.cast(model(thick, training=False), tf.float32) - fine))


def advance_to(progress, began):
    """Moves a bar counting seconds up to the time elapsed since `began` (never past its end)."""
    if progress is not None:
        progress.update(max(0, min(progress.total, int(time.monotonic() - began)) - progress.n))
