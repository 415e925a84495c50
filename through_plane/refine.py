"""Through-plane super-resolution: thick-slice volumes to fine slices, with a 1-D ESPCN.

Most clinical MRI is 2D multi-slice: fine pixels in the slice plane, thick
slices.  The method is SMORE's idea with the seed's small ESPCN:

- the degradation: a thick slice is the fine signal weighted by its slice
  profile (slice_profiles.py: a box or Gaussian of the slice thickness, at
  centres one spacing apart, gaps included);
- the geometry (slice_geometry.py): the network refines by a whole factor F
  on a working grid whose in-plane voxels are spacing / F; its estimate is
  resampled onto the output grid;
- the model upsamples rows only (modules.get_model_1d); a pretrained one per
  factor ships in pretrained/, trained by `train.py --through-plane-factor F`;
- per-volume adaptation (`adapt`): the volume's own fine in-plane planes,
  made thick along one in-plane direction by the acquisition's own profile,
  fine-tune the pretrained model for a number of steps fixed by the volume
  (or until its check crops stop improving); the time budget only caps it;
- inference (`estimate`): every plane that contains the slice axis, in both
  such orientations, with flips, averaged;
- data consistency (`make_consistent`): the estimate is projected onto the
  volumes whose thick slices are exactly the input's, which can only bring it
  closer to the truth when the degradation is the right one;
- the output keeps the input's world extent: along the slice axis, of n input
  and m output slices, output voxel i is centred at input coordinate
  (i + 0.5) n / m - 0.5 (volumes.resampled_affine).

The baseline is cubic B-spline interpolation along the slice axis
(`cubic_spline`), what viewers and scanner consoles do.
"""
import copy
import os
import time

import numpy as np
from matplotlib.figure import Figure

from common.atomic_files import write_atomically, write_json
from common import measures
from common import model_files
from common import slice_profiles
from common.tensorflow_env import keras, tf
import constants
import inference
import modules
from scans import volumes
from through_plane import slice_geometry


# --- Shape, degradation, baseline ----------------------------------------------------

def check_volume_shape(shape):
    """ValueError for a volume with a single voxel along any spatial axis: a 2D image, nothing between slices."""
    if min(shape[:3]) < 2:
        raise ValueError(f"a 2D image (shape {tuple(shape)}): through-plane super-resolution needs a 3D volume "
                         "of several slices")


def make_consistent(estimate, thick, axis, weights):
    """The estimate projected onto the fine volumes whose thick slices (`weights` @ fine) equal `thick` exactly.

    x + W^T (W W^T)^-1 (y - W x) with W the thick-slice matrix: the nearest
    such volume.  The true fine volume is one of them, so the projection never
    moves the estimate away from it (for box slices with no gap: each slice's
    residual added to the fine slices it covers).
    """
    residual = thick - slice_profiles.along_axis(weights, estimate, axis)
    return estimate + slice_profiles.along_axis(slice_profiles.consistency_matrix(weights), residual, axis)


def cubic_spline(volume, axis, n_out):
    """Cubic B-spline interpolation along `axis` onto `n_out` voxels over the same world extent (float64 math).

    What viewers and scanner consoles do; scipy's grid_mode maps voxel edges
    onto voxel edges (slice_geometry.resampling_matrix), the grid the model
    writes; beyond the end voxels the volume is mirrored.
    """
    matrix = slice_geometry.resampling_matrix(volume.shape[axis], n_out)
    return volume.astype(np.float32) if matrix is None else \
        slice_profiles.along_axis(matrix, volume.astype(np.float64), axis)


# --- Models ----------------------------------------------------------------------------

def load_model_1d(path, factor=None, precision="float32"):
    """A through-plane ESPCN from a .keras file (safe mode), served in `precision`; ValueError naming the file."""
    model = inference.read_model_file(path)
    found = modules.through_plane_factor(model)
    if found is None:
        raise ValueError(f"--model {path}: not a through-plane model (no DepthToSpace1D layer); "
                         "train one with train.py --through-plane-factor F")
    if factor is not None and found != factor:
        raise wrong_factor(path, found, factor)
    return modules.inference_model(model, precision)


def wrong_factor(path, found, factor):
    """The error for a --model file of factor `found` asked to refine by `factor`."""
    return ValueError(f"--model {path} refines x{found}, not the x{factor} asked for")


class ModelSource:
    """The starting model for a factor: a --model file if given, else the shipped one of the network named.

    `model` is predict.py's --model: "espcn" (the shipped ESPCNs, every factor
    of constants.THROUGH_PLANE_FACTORS), "quality" (the shipped quality
    networks: a factor without one is refused), None (the default network,
    constants.DEFAULT_NETWORK: a factor it does not ship is served by the
    ESPCN's, with a note), or a .keras file of one factor (factors(): volumes
    are refined at it).  Models are served in `precision` (predict.py's
    --precision; auto is bfloat16 on CPUs with AVX-512 BF16 or AMX).  On the
    template's --compare without adaptation (2-core AMD EPYC with AVX-512
    BF16): x4 34.7926 dB in bfloat16 against 34.7954 in float32, x3 36.7712
    against 36.7684, in 4.4 / 5.4 s against 8.0 / 9.2 s.
    """

    def __init__(self, model=None, precision=constants.PREDICT_PRECISION):
        named = model is None or model in constants.NETWORKS
        self.network = (model or constants.DEFAULT_NETWORK) if named else None
        self.chosen = model is not None  # --model named it: no other network stands in for a missing factor
        self.model_path, self.precision = (None if named else model), precision
        self.cache = {}

    def describe(self):
        """The source in words for the console and a BIDS dataset_description, e.g. "Quality network through-plane
        (shipped, the default)"."""
        if self.model_path:
            return f"{model_files.label(self.network_for(self.model_file_factor()))} through-plane, --model " \
                   f"{self.model_path}"
        why = f"--model {self.network}" if self.chosen else "the default"
        return f"{model_files.label(self.network)} through-plane (shipped, {why})"

    def network_for(self, factor):
        """The network that refines `factor` ("espcn" or "quality"), read from a --model file."""
        if self.model_path:
            return modules.network_of(self.cache[self.model_file_factor()][0])
        if self.chosen or os.path.isfile(model_files.shipped_path(self.network, factor)):
            return self.network
        return "espcn"  # the default network does not ship this factor: the ESPCN's stands in

    def path_for(self, factor):
        """The model file for `factor`: the --model file, or the shipped one (which may not exist)."""
        return self.model_path or model_files.shipped_path(self.network_for(factor), factor)

    def factors(self):
        """The factors this source refines, when not all: the quality network's shipped ones, or a --model
        file's own (read from the file, which stays cached); None for the ESPCN, which covers every factor.
        """
        if self.model_path:
            return (self.model_file_factor(),)
        return constants.QUALITY_THROUGH_PLANE_FACTORS if self.network == "quality" else None

    def model_file_factor(self):
        """The --model file's factor, its model loaded once into the cache."""
        if not self.cache:
            model = load_model_1d(self.model_path, None, self.precision)
            self.cache[modules.through_plane_factor(model)] = (model, f"--model {self.model_path}")
        return next(iter(self.cache))

    def starting_model(self, factor):
        """(model or None when no shipped ESPCN covers `factor`, a word on where it came from)."""
        if factor not in self.cache:
            path = self.path_for(factor)
            network = self.network_for(factor)
            if self.model_path:
                found = self.model_file_factor()
                if found != factor:
                    raise wrong_factor(path, found, factor)
            elif os.path.isfile(path):
                stand_in = "" if network == self.network else \
                    f" (no {model_files.label(self.network)} is shipped for x{factor}: the ESPCN's stands in)"
                self.cache[factor] = (load_model_1d(path, factor, self.precision),
                                      f"pretrained {model_files.shipped_name(network, factor)}{stand_in}")
            elif network == "quality":
                raise ValueError(f"--model quality: no quality network is shipped for x{factor} through-plane "
                                 f"({model_files.shipped_name('quality', factor)}); use --model espcn or a "
                                 f"model trained with train.py --network quality --through-plane-factor {factor}")
            else:
                self.cache[factor] = (None, "no pretrained model for this factor")
        return self.cache[factor]


# --- Per-volume adaptation ----------------------------------------------------------------

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
    settings.seed, and the learning rate decays by a cosine over the steps,
    so the result depends on the volume and the settings alone.

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
    tf.config.experimental.enable_op_determinism()  # kernels that could sum in a varying order no longer do
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
        cosine = 0.5 * (1 + np.cos(np.pi * done / steps))
        optimizer.learning_rate.assign(base_rate * (constants.LR_FLOOR + (1 - constants.LR_FLOOR) * cosine))
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


# --- Inference ---------------------------------------------------------------------------

def estimate(model, volume, axis, settings, after_pass=None):
    """The model's fine volume for a [0, 1] thick volume: every plane containing `axis`, both orientations.

    For each of the two other axes, the planes across it have the slice axis
    as rows; each is refined by in-plane inference's own path
    (inference.upscale_stack: its edges, tiles, batching and self-ensemble of
    settings.flips flips), and the estimates of both orientations averaged.
    `after_pass` (if given) is called after each orientation.
    """
    total = None
    for other in [k for k in range(3) if k != axis]:
        planes = np.moveaxis(volume, (other, axis), (0, 1))  # (n, thick rows, fine cols)
        out = inference.upscale_stack(model, planes, settings.batch_size, ensemble=settings.flips,
                                      edges=settings.edges, clip=False)
        out = np.moveaxis(out, (0, 1), (other, axis))
        total = out if total is None else total + out
        if after_pass is not None:
            after_pass()
    return total / 2


def inference_seconds(model, volume, axis, settings, sample=4):
    """The time `estimate` will take on `volume`, from timing `sample` of its own planes in each orientation.

    Each orientation's planes are timed on the real plane shape (after a
    warm-up call on the same shape, which builds its graph), so the estimate
    holds for thin or wide planes alike.  Only the time cap uses it.
    """
    total = 0.0
    for other in [k for k in range(3) if k != axis]:
        planes = np.moveaxis(volume, (other, axis), (0, 1))
        picked = np.ascontiguousarray(planes[np.linspace(0, len(planes) - 1, min(sample, len(planes))).astype(int)])
        inference.upscale_stack(model, picked, settings.batch_size, ensemble=settings.flips, edges=settings.edges)
        began = time.monotonic()
        inference.upscale_stack(model, picked, settings.batch_size, ensemble=settings.flips, edges=settings.edges)
        total += (time.monotonic() - began) * len(planes) / len(picked)
    return total


# --- One volume ------------------------------------------------------------------------------

class Settings:
    """How one run refines volumes: the flags of predict.py --through-plane, in one place."""

    def __init__(self, adapt=True, seconds=constants.THROUGH_PLANE_SECONDS, profile=constants.SLICE_PROFILE,
                 flips=None, seed=constants.ADAPT_SEED, edges=constants.EDGES, steps=None,
                 learning_rate=constants.ADAPT_LEARNING_RATE, patience=constants.ADAPT_PATIENCE, batch_size=None,
                 keep=None):
        self.adapt, self.seconds, self.profile, self.flips, self.seed = adapt, seconds, profile, flips, seed
        self.edges = edges  # inference.upscale_planes' edges
        self.steps, self.learning_rate = steps, learning_rate  # flips and steps: None = the network's default
        self.patience = patience  # adaptation's early stop, in checks (tools/adaptation_steps.py turns it off)
        self.batch_size = batch_size  # --batch-size: inference inputs per batch and crops per adaptation step
        self.keep = keep  # the share of adaptation's weight change kept; None = the network's default

    def for_network(self, network, ratio=None):
        """These settings with the network's own flips, adaptation steps and kept share where no flag set them.

        The quality network costs several times the ESPCN a pass and a step,
        so it has defaults of its own (constants.QUALITY_THROUGH_PLANE_FLIPS,
        QUALITY_ADAPT_STEPS) that keep a head inside the clinical time budget,
        and keeps part of its adaptation (QUALITY_ADAPT_KEEP), all of it on
        widely spaced slices, a spacing / pixel `ratio` of at least
        QUALITY_WIDE_RATIO (QUALITY_ADAPT_KEEP_WIDE).
        """
        quality = network == "quality"
        resolved = copy.copy(self)
        if resolved.flips is None:
            resolved.flips = constants.QUALITY_THROUGH_PLANE_FLIPS if quality else constants.THROUGH_PLANE_FLIPS
        if resolved.steps is None:
            resolved.steps = constants.QUALITY_ADAPT_STEPS if quality else constants.ADAPT_STEPS
        if resolved.keep is None and quality:
            wide = ratio is not None and ratio >= constants.QUALITY_WIDE_RATIO
            resolved.keep = constants.QUALITY_ADAPT_KEEP_WIDE if wide else constants.QUALITY_ADAPT_KEEP
        elif resolved.keep is None:
            resolved.keep = constants.ADAPT_KEEP
        return resolved


def advance_to(progress, began):
    """Moves a bar counting seconds up to the time elapsed since `began` (never past its end)."""
    if progress is not None:
        progress.update(max(0, min(progress.total, int(time.monotonic() - began)) - progress.n))


class Prepared:
    """The model a volume is refined with, the settings for its network, and what a user is told about it."""

    def __init__(self, model, settings, note, warning=None, steps=0, kept=None):
        self.model, self.settings, self.note, self.warning, self.steps = model, settings, note, warning, steps
        self.kept = kept  # the share of adaptation's weight change kept (None: not adapted from a pretrained model)


def prepare_model(source, working, geometry, settings, began, progress=None):
    """The model for a [0, 1] volume on its working grid: the starting one, adapted to the volume.

    Adaptation takes adaptation_steps(...) steps; the time budget
    (settings.seconds from `began`, less the measured cost of inference and a
    margin for writing) only caps it, with a warning.
    """
    factor = geometry.factor
    start, origin = source.starting_model(factor)
    settings = settings.for_network(modules.network_of(start) if start is not None else "espcn", geometry.ratio)
    fallback = None
    if start is None:
        fallback = (f"no shipped model refines x{factor} (shipped: x{constants.THROUGH_PLANE_FACTORS[0]} to "
                    f"x{constants.THROUGH_PLANE_FACTORS[1]}); a x{factor} model is trained from scratch on this "
                    "volume alone, which gains far less")
    if not settings.adapt:
        if start is None:
            raise ValueError(f"{fallback.split(';')[0]}: drop --no-adapt to train one on this volume, or give "
                             "--model")
        return Prepared(start, settings, origin)
    reference = start if start is not None else modules.get_model_1d(factor)
    deadline = began + settings.seconds - 1.2 * inference_seconds(reference, working, geometry.axis, settings) - 2.0
    steps = adaptation_steps(int(np.prod(working.shape)) * factor, settings)
    planes = np.ascontiguousarray(np.moveaxis(working, geometry.axis, 0))
    began_adapting = time.monotonic()
    model, done, stop = adapt(start, planes, factor, geometry.thickness / geometry.spacing, steps=steps,
                              deadline=deadline, settings=settings, precision=source.precision,
                              progress=progress, began=began)
    spent = time.monotonic() - began_adapting
    why = {"validation": "its own validation crops stopped improving", "time": "the time budget",
           "steps": f"its {steps} steps"}[stop]
    warning = fallback
    if stop == "time":
        warning = inference.join_warnings(fallback, f"adaptation cut short at {done} of {steps} steps by "
                                                    f"--through-plane-seconds {settings.seconds:g}: the output "
                                                    "depends on this machine's speed and load")
    kept = f", {settings.keep:g} of the change kept" if start is not None and settings.keep != 1.0 else ""
    note = f"{origin}, adapted to this volume for {spent:.0f} s ({done} steps; stopped by {why}{kept})"
    return Prepared(model, settings, note, warning, done, settings.keep if start is not None else None)


def refine(model, volume, geometry, settings, progress=None, began=None, working=None):
    """The output-grid volume for a [0, 1] thick volume (input grid), made consistent with the input.

    The volume goes onto the working grid (in-plane voxels of
    geometry.working_pixel), the model refines its slices there, the estimate
    goes onto the output grid (the input's in-plane voxels, the output's
    slices) with the in-plane detail the working grid could not hold
    (detail_finer_than_working), and there it is projected onto the volumes
    whose thick slices are exactly the input's (make_consistent).  `working`:
    the volume already on the working grid, when the caller has it.
    """
    if working is None:
        working = slice_geometry.resample(volume, geometry.working_shape())
    fine = estimate(model, working, geometry.axis, settings,
                    None if progress is None else (lambda: advance_to(progress, began)))
    fine = slice_geometry.resample(fine, geometry.output_shape()) + detail_finer_than_working(volume, working, geometry)
    return make_consistent(fine, volume, geometry.axis, geometry.output_weights(settings.profile))


def detail_finer_than_working(volume, working, geometry):
    """What the input loses on its way to the working grid and back, on the output grid (0 on the same grid).

    A working grid coarser in-plane than the input (0.87 mm pixels, 4 mm
    slices refined x4 on a 1 mm grid) loses the finest in-plane detail on the
    way there and back; a finer one (1.2 mm pixels at x4) changes a little
    on the way (B-spline up, box mean down).  What the thick slices lose that
    way is known; spread along the slices by cubic B-spline, as the baseline
    spreads whole slices, it comes back smooth across the slices.  Data
    consistency alone would put it back too, but as a staircase: each thick
    slice's share on each of its fine slices.
    """
    if working.shape == volume.shape:
        return 0.0
    lost = volume - slice_geometry.resample(working, volume.shape)
    return slice_geometry.resample(lost, geometry.output_shape())  # along the slices: cubic_spline's B-spline


def scaled_and_working(volume, geometry):
    """(volume scaled by its robust range into [0, 1], that on the working grid, the range (low, high))."""
    low, high = volumes.robust_range(volume)
    scaled = (volume - low) / (high - low)
    return scaled, slice_geometry.resample(scaled, geometry.working_shape()), (low, high)


def super_resolve_through_plane(source, image, data, geometry, settings, progress=None):
    """Every 3D frame of `data` refined along geometry.axis onto the output grid, as stored values.

    NaN/Inf voxels are handled as in-plane (inference.finite_copy); a 4D series
    is done volume by volume with the model adapted on its first volume (one
    acquisition, one contrast).  `progress` is a bar counting seconds of
    settings.seconds.  Returns (output array, Prepared, NaN count, Inf count).
    """
    began = time.monotonic()
    series = data if data.ndim == 4 else data[..., None]
    out = volumes.output_array(image, list(geometry.output_shape()) + list(data.shape[3:]))
    out_series = out if data.ndim == 4 else out[..., None]
    counts, prepared = [0, 0], None
    for t in range(series.shape[3]):
        volume, nan_mask, n_nan, n_inf = inference.finite_copy(series[..., t])
        counts[0], counts[1] = counts[0] + n_nan, counts[1] + n_inf
        scaled, working, (low, high) = scaled_and_working(volume, geometry)
        if prepared is None:
            prepared = prepare_model(source, working, geometry, settings, began, progress)
        refined = refine(prepared.model, scaled, geometry, prepared.settings, progress, began, working)
        del working
        values = np.clip(refined * (high - low) + low, float(volume.min()), float(volume.max()))
        if nan_mask is not None and out.dtype.kind == "f":
            values[nearest_mask(nan_mask, geometry)] = np.nan
        out_series[..., t] = volumes.to_stored(values, image, out.dtype)
    return out, prepared, counts[0], counts[1]


def nearest_mask(mask, geometry):
    """A mask of the input grid carried onto the output grid: each output slice takes its nearest input slice's."""
    n, m = geometry.shape[geometry.axis], geometry.output_slices()
    nearest = np.minimum(n - 1, ((np.arange(m) + 0.5) * n / m).astype(int))
    return np.take(mask, nearest, axis=geometry.axis)


# --- --compare --through-plane: thick slices made from a fine volume ----------------------------

def scores(estimate, truth, axis):
    """PSNR (dB, over the whole volume, peak = the truth's max - min) and mean SSIM (over the planes across the
    first other axis, both scaled by the truth's range) of volumes in real units."""
    low, span = float(truth.min()), float(truth.max() - truth.min()) or 1.0
    psnr = measures.psnr(estimate, truth, span)
    other = min(k for k in range(3) if k != axis)
    planes = [np.moveaxis((v - low) / span, (other, axis), (0, 1))[..., None].astype(np.float32)
              for v in (estimate, truth)]
    ssim = float(np.mean(modules.ssim(tf.constant(planes[0]), tf.constant(planes[1])).numpy()))
    return {"psnr": round(psnr, 4), "ssim": round(ssim, 4)}


def compare_on_volume(source, path, out_path, axis, factor, settings, progress=None):
    """Thick slices from the fine volume in `path`, refined by the model and by cubic spline, scored against it.

    Thick slice j is the mean of fine slices jF .. jF+F-1 (the slice profile
    of settings, no gap); outputs are scored as tools/through_plane_check.py
    scores predict.py's (real units, peak = the reference's max - min, both
    clipped to the thick volume's range as predict.py clips its output).
    Writes the figure `out_path` (one plane across the slices: thick input,
    cubic spline, model, original) and the scores beside it as .json; returns
    the scores.
    """
    image, data = volumes.load_volume(path)
    check_volume_shape(data.shape)
    truth = inference.finite_copy(data if data.ndim == 3 else data[..., 0])[0]
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    axis = slice_geometry.slice_axis(zooms, axis)
    thick, fine = slice_profiles.make_thick(truth, axis, factor, profile=settings.profile)
    geometry = slice_geometry.Geometry(axis, thick.shape, tuple(z * (factor if k == axis else 1)
                                                                for k, z in enumerate(zooms)),
                                       zooms[axis] * factor, f"{factor} fine slices averaged", factor, zooms[axis])
    low, high = volumes.robust_range(thick)
    scaled = (thick - low) / (high - low)
    began = time.monotonic()
    working = slice_geometry.resample(scaled, geometry.working_shape())
    prepared = prepare_model(source, working, geometry, settings, began, progress)
    model = refine(prepared.model, scaled, geometry, prepared.settings, progress, began, working) * (high - low) + low
    outputs = {name: np.clip(output, thick.min(), thick.max()) for name, output in
               (("cubic spline", cubic_spline(thick, axis, fine.shape[axis])), ("model", model))}
    results = {"file": os.path.basename(path), "slice_axis": axis, "factor": factor, "model_note": prepared.note,
               **{f"{name.replace(' ', '_')}_{key}": value for name, output in outputs.items()
                  for key, value in scores(output, fine, axis).items()}}
    save_reformat_figure(thick, outputs, fine, axis, factor, results, out_path)
    write_json(os.path.splitext(out_path)[0] + ".json", results)
    return results


def save_reformat_figure(thick, outputs, fine, axis, factor, results, path):
    """One plane across the slices (the middle one across the first other axis), side by side, in the truth's range."""
    other = min(k for k in range(3) if k != axis)
    index = fine.shape[other] // 2
    plane_axis = axis - 1 if other < axis else axis  # the slice axis inside the plane
    low, high = volumes.robust_range(fine)
    panels = [(f"thick input (x{factor}, nearest)", np.repeat(np.take(thick, index, other), factor, plane_axis))]
    for name, output in outputs.items():
        key = name.replace(" ", "_")
        panels.append((f"{name}\nPSNR {results[key + '_psnr']:.2f} dB  SSIM {results[key + '_ssim']:.3f}",
                       np.take(output, index, other)))
    panels.append(("original", np.take(fine, index, other)))
    fig = Figure(figsize=(3.2 * len(panels), 3.6))
    for ax, (title, plane) in zip(fig.subplots(1, len(panels)), panels):
        ax.imshow(np.rot90(plane), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
