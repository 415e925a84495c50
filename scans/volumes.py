"""NIfTI volumes: reading them safely, their grids, intensities, and super-resolving them.

A volume is read once as float32 in its real units (scl_slope/scl_inter
applied), scaled to [0, 1] by its robust range for the network, and the output
is written in the input's own on-disk data type, with the same scaling, header,
units and qform/sform codes.  Resampled grids keep the world extent exactly:
along an axis made f times finer, output voxel i is centred at input voxel
coordinate (i + 0.5) / f - 0.5.
"""
import contextlib
import logging
import os
import warnings

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel.fileholders import FileHolder

from common.atomic_files import write_atomically
import constants
import inference
import modules

# Volume files nibabel reads and writes: NIfTI, and FreeSurfer's MGH (.mgz is gzipped .mgh).
NIFTI_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")


def is_nifti(path):
    """True for a volume file by name: NIfTI (.nii, .nii.gz) or FreeSurfer MGH (.mgh, .mgz)."""
    return path.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path):
    """The file name without .nii / .nii.gz / .mgh / .mgz."""
    name = os.path.basename(path)
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def output_suffix(path):
    """The suffix of a volume's output: its own format, gzipped (.nii.gz for NIfTI, .mgz for MGH)."""
    return ".mgz" if path.lower().endswith((".mgz", ".mgh")) else ".nii.gz"


# --- Reading -------------------------------------------------------------------

def load_volume(path, notes=None):
    """(nibabel image, float32 data in real units) of a 3D or 4D NIfTI or MGH file; ValueError on a bad one.

    Checked before any voxel is read: a dimension of size 0, RGB or complex
    voxels (refused: this tool super-resolves one real channel), voxel sizes
    that are not finite, and a volume too large for memory.  Library warnings
    are kept out of the user's terminal; what matters is said in the one line
    of the ValueError, or, for a header nibabel repairs on reading (zero or
    negative voxel sizes become 1 or their absolute value), appended to the
    list `notes` for the caller's one warning line.
    """
    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    with warnings.catch_warnings(), np.errstate(all="ignore"), nibabel_log(notes):
        warnings.simplefilter("ignore")
        try:
            image = nib.load(path)
        except Exception as error:  # nibabel, gzip and zlib each raise their own kinds
            raise ValueError(f"not a readable NIfTI or MGH volume ({first_line(error)})") from None
        check_header(image)
        try:
            data = np.asarray(image.dataobj, dtype=np.float32)
        except Exception as error:
            raise ValueError(f"its voxel data cannot be read; the file may be truncated ({first_line(error)})") \
                from None
    return image, data


@contextlib.contextmanager
def nibabel_log(notes):
    """Collects what nibabel logs (header repairs) into `notes` instead of printing it."""
    logger = logging.getLogger("nibabel.global")
    collector = logging.Handler()
    collector.emit = lambda record: notes.append(f"header repaired on reading: {record.getMessage()}") \
        if notes is not None else None
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [collector], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else "no details"


def check_header(image):
    shape = image.shape
    if len(shape) not in (3, 4):
        raise ValueError(f"a {len(shape)}D volume of shape {shape}; only 3D volumes (or 4D series of them) "
                         "are supported")
    if 0 in shape:
        raise ValueError(f"has a dimension of size 0 (shape {shape}): no voxels")
    dtype = image.get_data_dtype()
    if dtype.fields is not None:
        raise ValueError("holds RGB colour voxels; this tool super-resolves one-channel (greyscale) volumes")
    if dtype.kind == "c":
        raise ValueError("holds complex voxels; super-resolve its magnitude (a real volume) instead")
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
        raise ValueError(f"invalid voxel sizes in its header ({', '.join(f'{z:g}' for z in zooms)}): "
                         "each must be a positive number")
    inference.check_output_fits(int(np.prod(shape)) * 4, "reading its voxels")


def robust_range(data):
    """(low, high) of the finite values: the 0.5 and 99.5 percentiles, or min and max if they coincide."""
    finite = data[np.isfinite(data)]
    low, high = np.percentile(finite, [0.5, 99.5])
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    return float(low), float(high) if high > low else float(low) + 1.0


# --- Grids -----------------------------------------------------------------------

def nearest_indices(n_in, n_out):
    """For each of `n_out` voxels over the extent of `n_in` voxels, the input voxel its centre lies in."""
    return np.minimum(n_in - 1, ((np.arange(n_out) + 0.5) * n_in / n_out).astype(int))


def resampled_affine(affine, factors):
    """The affine of the grid `factors[k]` times finer along axis k, covering the same world extent."""
    step = np.eye(4)
    for k, factor in enumerate(factors):
        step[k, k] = 1.0 / factor
        step[k, 3] = 0.5 / factor - 0.5
    return affine @ step


def in_plane_factors(axis, factor):
    """Per-axis factors that refine every axis but `axis` (the slice axis) by `factor`."""
    return [1 if k == axis else factor for k in range(3)]


# --- Writing ---------------------------------------------------------------------

def output_array(image, shape):
    """An empty array for the output, in the input's on-disk data type, refused up front if it cannot fit.

    It is laid out in Fortran order, as NIfTI and MGH files store voxels, so
    writing it is a straight copy of contiguous memory (a C-order array of a
    256x256x64 volume's x4 output took 1.1 s more to write, 2-core AVX2 EPYC).
    """
    dtype = image.get_data_dtype()
    inference.check_output_fits(int(np.prod(shape)) * dtype.itemsize)
    return np.empty(shape, dtype, order="F")


def to_stored(values, image, dtype):
    """Real-unit float values as the input file stores them: its scaling undone, rounded and clipped for integers."""
    slope, inter = scaling_of(image)
    raw = (values - inter) / slope if (slope, inter) != (1.0, 0.0) else values
    if np.dtype(dtype).kind in "iu":
        raw = np.clip(np.round(raw), *integer_range(dtype))
    return raw.astype(dtype, copy=False)


def integer_range(dtype):
    """(min, max) of an integer type as floats that cast back to it without wrapping round.

    float32 cannot hold int32's maximum: it rounds up to 2**31, which casts
    to int32's minimum; the largest float32 below it is taken instead.
    """
    limits = np.iinfo(dtype)
    top = np.float32(limits.max)
    return float(limits.min), float(np.nextafter(top, np.float32(0)) if int(top) > limits.max else top)


def scaling_of(image):
    """(slope, inter) applied to the stored integers of `image` (1, 0 for float files and unscaled ones)."""
    if image.get_data_dtype().kind not in "iu":
        return 1.0, 0.0
    slope, inter = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope, inter


def resampled_image(image, out, factors):
    """`out` (stored values) as an image of `image`'s kind on the grid `factors` times finer than its grid.

    The header is the input's (data type, units, intent, descriptions), with
    zooms divided by the factors and, for NIfTI, qform (scanner) and sform
    (e.g. registered), which may differ, each resampled on its own with its
    code.  An MGH header has no qform/sform: its affine and zooms are all.
    """
    header = image.header.copy()
    zooms = list(header.get_zooms())
    for k in range(3):
        zooms[k] /= factors[k]
    result = type(image)(out, resampled_affine(image.affine, factors), header=header)
    result.header.set_zooms(zooms)
    if isinstance(result, nib.Nifti1Image):  # Nifti2Image is one too
        result.set_qform(resampled_affine(header.get_qform(), factors), code=int(header["qform_code"]))
        result.set_sform(resampled_affine(header.get_sform(), factors), code=int(header["sform_code"]))
    slope, inter = scaling_of(image)
    if (slope, inter) != (1.0, 0.0):
        result.header.set_slope_inter(slope, inter)
    return result


def save_resampled(image, out, factors, path, level=constants.GZIP_LEVEL):
    """Writes `out` (stored values) on the grid `factors` times finer than `image`'s, atomically (resampled_image).

    The format follows `path`'s suffix (tmp names end with it): .nii.gz and
    .mgz are written gzipped.
    """
    save_image(resampled_image(image, out, factors), path, level)


def save_image(image, path, level=constants.GZIP_LEVEL):
    """Writes a nibabel image atomically, in the format of `path`'s suffix (write_image)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_atomically(path, lambda tmp: write_image(image, tmp, level))


def write_image(image, path, level=constants.GZIP_LEVEL):
    """Writes a nibabel image to `path`; .nii.gz and .mgz are gzipped with ISA-L's deflate at `level` (0-3).

    The file is an ordinary gzip stream that every reader takes; ISA-L at
    its default level (constants.GZIP_LEVEL) wrote a 128 MB x4 output 4x
    faster than zlib's level 1 (nibabel's default) and a little smaller (docs/performance.md, issue 31).
    No file name or time goes into the gzip header, so one input always gives
    the same bytes.
    """
    kind = nib.MGHImage if path.lower().endswith(".mgz") else nib.Nifti1Image if path.lower().endswith(".nii.gz") \
        else None
    if kind is None or not isinstance(image, kind):  # uncompressed, or a conversion nibabel does on saving
        nib.save(image, path)
        return
    with open(path, "wb") as raw, igzip.IGzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                  compresslevel=level) as stream:
        image.to_file_map({"image": FileHolder(fileobj=stream)})


# --- In-plane super-resolution ---------------------------------------------------

def super_resolve_in_plane(model, image, data, axis, batch_size=None, progress=None, ensemble=1, edges="auto"):
    """Every slice across `axis` upscaled in-plane, as stored values in an array of the input's data type.

    NaN/Inf voxels are replaced by inference.finite_copy's rule before the
    network sees them; a NaN voxel's output voxels are NaN again where the
    data type can hold it.  Returns (output array, NaN count, Inf count).
    """
    factor = modules.model_upscale_factor(model)
    series = data if data.ndim == 4 else data[..., None]
    shape = [size * f for size, f in zip(data.shape[:3], in_plane_factors(axis, factor))] + list(data.shape[3:])
    out = output_array(image, shape)
    out_series = out if data.ndim == 4 else out[..., None]
    counts = [0, 0]
    for t in range(series.shape[3]):
        volume, nan_mask, n_nan, n_inf = inference.finite_copy(series[..., t])
        counts[0], counts[1] = counts[0] + n_nan, counts[1] + n_inf
        low, high = robust_range(volume)
        write = plane_writer(image, np.moveaxis(out_series[..., t], axis, 0), volume, (low, high), nan_mask, axis,
                             factor)
        # clip=False: the network's [0, 1] is the robust range, not the volume's; voxels brighter than its
        # 99.5th percentile (enhancing vessels and lesions) stay as bright as they come, limited by the
        # writer to the input's own [min, max] and data type
        inference.upscale_planes(model, ScaledPlanes(np.moveaxis(volume, axis, 0), low, high),
                                 write, batch_size, progress=progress, ensemble=ensemble, edges=edges, clip=False)
    return out, counts[0], counts[1]


class ScaledPlanes:
    """The planes of a (n, h, w) array scaled from [low, high] to [0, 1], one at a time (no full copy)."""

    def __init__(self, planes, low, high):
        self.planes, self.low, self.span = planes, low, high - low

    def __len__(self):
        return len(self.planes)

    def __getitem__(self, index):
        return (self.planes[index] - self.low) / self.span


def plane_writer(image, out_planes, volume, scaled_range, nan_mask, axis, factor):
    """The `write` callback of inference.upscale_planes that stores [0,1] blocks as the volume's values.

    One float32 pass in place over each block: [0, 1] to the stored values
    (scaled_range = (low, high), the real values of 0 and 1, then the file's
    scaling undone), limited to the input's own [min, max] and the data type,
    rounded for integer types.
    """
    low, high = scaled_range
    slope, inter = scaling_of(image)
    scale, shift = (high - low) / slope, (low - inter) / slope
    bounds = sorted(((float(volume.min()) - inter) / slope, (float(volume.max()) - inter) / slope))
    integer = out_planes.dtype.kind in "iu"
    if integer:
        low_limit, high_limit = integer_range(out_planes.dtype)
        bounds = [max(bounds[0], low_limit), min(bounds[1], high_limit)]
    nan_planes = None if nan_mask is None else np.moveaxis(nan_mask, axis, 0)
    keeps_nan = out_planes.dtype.kind == "f"

    def write(index, top, left, block):
        values = np.asarray(block, np.float32)  # the block is ours: changed in place
        values *= scale
        values += shift
        np.clip(values, *bounds, out=values)
        if integer:
            np.rint(values, out=values)
        if nan_planes is not None and keeps_nan:
            inference.put_back_nan(values, nan_planes[index], top, left, factor)
        store_in_strips(out_planes[index, top:top + block.shape[0], left:left + block.shape[1]], values)

    return write


# Rows of a block copied into the output at a time.  The output is laid out as
# files store it (x fastest) and a block row by row, so the copy transposes;
# strips of 16 rows keep both sides in cache: the 64 blocks of a 256x256x64
# volume's x4 output took 0.16 s against 0.33 s in one copy each, 8 rows 0.14,
# 64 rows 0.25 (2-core AVX2 EPYC).
STRIP_ROWS = 16


def store_in_strips(target, values):
    """target[...] = values (cast to target's type), STRIP_ROWS rows at a time."""
    for row in range(0, values.shape[0], STRIP_ROWS):
        target[row:row + STRIP_ROWS] = values[row:row + STRIP_ROWS]


def middle_plane(data, axis):
    """The [0, 1] middle slice across `axis` of a volume's first 3D frame (for --compare)."""
    volume = inference.finite_copy(data if data.ndim == 3 else data[..., 0])[0]
    low, high = robust_range(volume)
    plane = np.take(volume, volume.shape[axis] // 2, axis=axis)
    return np.clip((plane - low) / (high - low), 0.0, 1.0)
