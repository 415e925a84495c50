"""The slice geometry of a thick-slice volume, and the grids through-plane super-resolution works on.

A clinical 2D multi-slice scan has three numbers along its slice axis: the
slice spacing S (centre to centre, from the affine), the slice thickness T
(S - T is the gap; from the DICOM header, a BIDS sidecar JSON or
--slice-thickness) and the in-plane pixel p, which scanners often interpolate
finer than they acquired, so S / p runs from about 1.5 to 15.

The shipped through-plane models refine by a whole factor F of 2 to 6 on an
isotropic grid.  So the network works on a *working grid*: the slice axis as
acquired, the in-plane axes resampled to w = S / F where they are more than
1.2x from it (constants.WORKING_GRID_TOLERANCE; F = S / p taken to the nearest
factor the network ships: 3, 4 or 6 for the quality network, the default; with
--model espcn rounded within 2..6; with a --model file, the file's own factor):
there the thick slices are F working voxels apart and T / w thick, the
geometry the model is adapted to.  Its estimate is then resampled onto the
*output grid*, the input's own in-plane voxels and slices `target` mm apart
(default w, the network's own spacing), and made consistent with the input
there (through_plane.refine.make_consistent).  Resampling keeps the world extent
exactly: along an axis of n voxels made m, output voxel i is centred at input
coordinate (i + 0.5) n / m - 0.5.
"""
import json
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from common import slice_profiles
import constants
from scans import provenance


@dataclass
class Geometry:
    """The acquisition along one volume's slice axis, and the grids derived from it (all sizes in mm)."""
    axis: int
    shape: tuple  # the volume's (3D) shape
    zooms: tuple  # voxel sizes of the three axes; zooms[axis] is the slice spacing
    thickness: float
    thickness_source: str  # where the thickness came from, in words
    factor: int  # the model's factor on the working grid
    target: float  # requested output slice spacing

    @property
    def spacing(self):
        return float(self.zooms[self.axis])

    @property
    def working_pixel(self):
        return self.spacing / self.factor

    @property
    def ratio(self):
        """Slice spacing / finest in-plane voxel."""
        return self.spacing / finest_in_plane(self.zooms, self.axis)

    @property
    def in_plane_axes(self):
        return [k for k in range(3) if k != self.axis]

    def keeps_own_voxels(self, k):
        """True where in-plane axis `k` is near enough the working voxel to stay as acquired
        (constants.WORKING_GRID_TOLERANCE): resampling it would only blur it."""
        ratio = self.zooms[k] / self.working_pixel
        return max(ratio, 1 / ratio) <= constants.WORKING_GRID_TOLERANCE

    def working_shape(self):
        """Voxels of the working grid along each axis (the slice axis, and in-plane axes near w, as acquired)."""
        return tuple(self.shape[k] if k == self.axis or self.keeps_own_voxels(k) else
                     resampled_length(self.shape[k], self.zooms[k], self.working_pixel) for k in range(3))

    def working_zooms(self):
        """The working grid's voxel sizes in mm."""
        return tuple(self.zooms[k] * self.shape[k] / n for k, n in enumerate(self.working_shape()))

    def output_slices(self):
        """Slices of the output grid: the input's extent cut into slices as near `target` mm as whole numbers allow."""
        return max(self.shape[self.axis], int(round(self.shape[self.axis] * self.spacing / self.target)))

    def output_shape(self):
        return tuple(self.output_slices() if k == self.axis else self.shape[k] for k in range(3))

    def output_factors(self):
        """Per-axis factors of the output grid against the input's (volumes.resampled_affine takes them)."""
        return [self.output_slices() / self.shape[self.axis] if k == self.axis else 1 for k in range(3)]

    def output_spacing(self):
        return self.spacing * self.shape[self.axis] / self.output_slices()

    def output_weights(self, profile):
        """Thick-slice weights of the input's slices on the output grid: (input slices, output slices)."""
        n, m = self.shape[self.axis], self.output_slices()
        step = m / n  # output voxels per input slice
        centres = (np.arange(n) + 0.5) * step - 0.5
        return slice_profiles.thick_slice_weights(m, centres, self.thickness / self.spacing * step, profile)

    def describe(self):
        sizes = " x ".join(f"{z:.3g}" for z in self.zooms)
        gap = self.spacing - self.thickness
        return (f"slices {self.spacing:.3g} mm apart, {self.thickness:.3g} mm thick ({self.thickness_source})"
                + (f", gap {gap:.3g} mm" if gap > 1e-3 else "") + f", voxels {sizes} mm; "
                f"x{self.factor} on a {' x '.join(f'{z:.3g}' for z in self.working_zooms())} mm working grid, "
                f"output slices "
                f"{self.output_spacing():.3g} mm apart")


def resampled_length(n, size, new_size):
    """Voxels along an axis of `n` voxels of `size` mm resampled to about `new_size` mm (at least 1)."""
    return max(1, int(round(n * size / new_size)))


def slice_axis(zooms, axis=None):
    """The slice axis: `axis` if given, else the largest voxel size (2 when all are equal)."""
    zooms = [float(z) for z in zooms[:3]]
    if axis is not None:
        return axis
    return int(np.argmax(zooms)) if max(zooms) > min(zooms) * 1.001 else 2


def finest_in_plane(zooms, axis):
    """The finer of the two in-plane voxel sizes (the slice axis is `axis`)."""
    return min(zooms[k] for k in range(3) if k != axis)


def nearest_factor(ratio, factors):
    """The factor of `factors` nearest `ratio`; ties, within 1e-4 (float32 zooms: 5 mm on 0.9999999 mm pixels
    is a ratio of 5.0000006), go to the smaller, whose working grid has fewer voxels."""
    nearest = min(abs(ratio - f) for f in factors)
    return min(f for f in factors if abs(ratio - f) <= nearest + 1e-4)


def working_factor(spacing, finest_pixel, factor=None, shipped=None):
    """The model's factor F: `factor` if given, else spacing / in-plane pixel rounded, within the shipped models.

    `shipped`: the factors the model source refines when not all (ModelSource.factors: the quality
    network's constants.QUALITY_THROUGH_PLANE_FACTORS, or a --model file's own factor), or None for every
    factor of constants.THROUGH_PLANE_FACTORS; the ratio is taken to the nearest of them (ties: the
    smaller).  ValueError in words for a volume with no thick slices to refine (ratio under
    constants.THROUGH_PLANE_MIN_RATIO) or one whose working grid would be more than
    constants.THROUGH_PLANE_MAX_OVERSAMPLING times finer than its pixels, unless a factor is given.
    """
    if factor is not None:
        return int(factor)
    ratio = spacing / finest_pixel
    if ratio < constants.THROUGH_PLANE_MIN_RATIO:
        raise ValueError(f"nearly isotropic (slices {spacing:g} mm apart, in-plane voxels {finest_pixel:g} mm): "
                         "no thick slices to refine; give --through-plane-factor N to refine it anyway")
    low, high = constants.THROUGH_PLANE_FACTORS
    if shipped is None:
        return int(min(high, max(low, round(ratio))))
    chosen = nearest_factor(ratio, shipped)
    if chosen > ratio * constants.THROUGH_PLANE_MAX_OVERSAMPLING:
        raise ValueError(f"slices {spacing:g} mm apart on {finest_pixel:g} mm pixels (ratio {ratio:.3g}) are too "
                         f"close for a x{chosen} model: its working grid would be {chosen / ratio:.3g} times finer "
                         f"than the pixels (at most {constants.THROUGH_PLANE_MAX_OVERSAMPLING:g}); use a model of a "
                         f"factor nearer {ratio:.3g}, or give --through-plane-factor {chosen} to refine it anyway")
    return chosen


def read_geometry(zooms, shape, *, axis=None, factor=None, thickness=None, thickness_source=None,
                  sidecar=None, target=None, shipped=None):
    """The Geometry of a volume of voxel sizes `zooms` and 3D `shape`.

    Args:
        axis, factor: --axis and --through-plane-factor (None: inferred).
        thickness, thickness_source: the slice thickness in mm and where it came from (--slice-thickness, the
            DICOM header), or None to read `sidecar`.
        sidecar: the path of a BIDS sidecar JSON (<stem>.json) beside a NIfTI, or None.
        target: --target-spacing in mm (None: the working grid's spacing).
        shipped: the factors the model source refines, when not all (working_factor).
    """
    zooms = tuple(float(z) for z in zooms[:3])
    axis = slice_axis(zooms, axis)
    spacing = zooms[axis]
    if thickness is None and sidecar is not None:
        thickness = sidecar_thickness(sidecar)
        thickness_source = f"{os.path.basename(sidecar)}" if thickness is not None else None
    if thickness is None:
        thickness, thickness_source = spacing, "assumed equal to the spacing"
    finest = finest_in_plane(zooms, axis)
    factor = working_factor(spacing, finest, factor, shipped)
    return Geometry(axis, tuple(shape[:3]), zooms, float(thickness), thickness_source, factor,
                    float(target) if target else spacing / factor)


def sidecar_path(volume_path):
    """The BIDS sidecar JSON beside a NIfTI (<stem>.json), or None when there is none."""
    path = provenance.sidecar_path(volume_path)
    return path if os.path.isfile(path) else None


def sidecar_thickness(path):
    """SliceThickness (mm) from a BIDS sidecar JSON, or None when it has none; ValueError naming a bad file."""
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"sidecar {path}: not readable JSON ({' '.join(str(error).split())[:120]})") from None
    value = fields.get("SliceThickness") if isinstance(fields, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"sidecar {path}: SliceThickness {value!r} is not a positive number of mm")
    return float(value)


# --- Resampling between grids -----------------------------------------------------------

def resampling_matrix(n_in, n_out):
    """(n_out, n_in) matrix taking `n_in` voxels onto `n_out` over the same extent; None when n_in == n_out.

    Finer: cubic B-spline (scipy's grid_mode, mirrored beyond the ends),
    applied as the matrix of interpolated unit impulses.  Coarser: the mean
    over each new voxel (slice_profiles' box), which does not alias.
    """
    if n_in == n_out:
        return None
    if n_out < n_in:
        step = n_in / n_out
        return slice_profiles.thick_slice_weights(n_in, (np.arange(n_out) + 0.5) * step - 0.5, step, "box")
    impulses = np.eye(n_in)
    return np.stack([ndimage.zoom(impulses[j], n_out / n_in, order=3, mode="reflect", grid_mode=True)
                     for j in range(n_in)], axis=1)


def resample(volume, shape):
    """`volume` taken onto a grid of `shape` over the same extent, axis by axis (resampling_matrix)."""
    for k, n_out in enumerate(shape):
        matrix = resampling_matrix(volume.shape[k], n_out)
        if matrix is not None:
            volume = slice_profiles.along_axis(matrix, volume, k)
    return volume
