"""A look at what a volume run did: the three planes through the centre, input beside output, in one PNG.

Beside every volume output (NIfTI, MGH, a DICOM series, a BIDS derivative)
predict.py writes a small figure (predict.py --no-figures skips it): the
sagittal, coronal and axial planes through the output's centre, the input on
top as a viewer shows it on the output's grid (each output voxel takes the
input voxel it lies in: thick slices stay blocks), the output below, both in
the output's robust intensity window, each plane with its voxels' true
aspect.  Its title names the network, the factors and the time it took, so a
batch is checked by looking rather than by opening each volume.
"""
import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from common.atomic_files import write_atomically
from scans import volumes

PLANE_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}  # by the world axis (RAS) each plane holds fixed


def centre_planes(data, shape_out=None):
    """{voxel axis: the plane through the centre across it} of a 3D array, taken on the grid `shape_out`
    (the array's own by default) by nearest voxel."""
    shape_out = shape_out or data.shape
    maps = [volumes.nearest_indices(n, m) for n, m in zip(data.shape, shape_out)]
    planes = {}
    for axis in range(3):
        others = [k for k in range(3) if k != axis]
        plane = np.take(data, maps[axis][shape_out[axis] // 2], axis=axis)
        planes[axis] = plane[np.ix_(maps[others[0]], maps[others[1]])]
    return planes


def upright(plane, axis, orientation, zooms):
    """(a plane as shown: rows top to bottom, world axes increasing right and up; its pixels' height / width)."""
    others = [k for k in range(3) if k != axis]
    world = [int(orientation[k, 0]) for k in others]
    flips = [orientation[k, 1] for k in others]
    sizes = [zooms[k] for k in others]
    if world[0] > world[1]:  # the lower world axis runs across, the higher one up
        plane, world, flips, sizes = plane.T, world[::-1], flips[::-1], sizes[::-1]
    plane = plane[::-1] if flips[0] < 0 else plane
    plane = plane[:, ::-1] if flips[1] < 0 else plane
    return plane.T[::-1], sizes[1] / sizes[0]


def save_planes_figure(input_data, output_data, output_affine, output_zooms, title, path, output_scaling=(1.0, 0.0)):
    """Writes the figure (PNG, atomically) of a 3D input and its output on the output's grid.

    Args:
        input_data, output_data: 3D arrays in the same units (the first frame of a 4D series).
        output_affine, output_zooms: the output's grid (its voxel axes' world orientation, voxel sizes in mm).
        title: what made it (network, factors, time).
        output_scaling: (slope, inter) turning the output's stored values into the input's units.
    """
    orientation = nib.orientations.io_orientation(output_affine)
    if np.isnan(orientation).any():  # a singular affine places no axis: show the voxel axes as they are
        orientation = np.array([[0, 1], [1, 1], [2, 1]], float)
    slope, inter = output_scaling
    rows = {"input": centre_planes(input_data, output_data.shape),
            "output": {axis: plane.astype(np.float32) * slope + inter
                       for axis, plane in centre_planes(output_data).items()}}
    values = np.concatenate([plane.ravel() for plane in rows["output"].values()])
    values = values[np.isfinite(values)]
    low, high = np.percentile(values, (0.5, 99.5)) if values.size else (0.0, 1.0)
    fig = Figure(figsize=(9, 6.4))
    axes = fig.subplots(2, 3)
    for row, (name, planes) in enumerate(rows.items()):
        for column, axis in enumerate(sorted(planes, key=lambda k: int(orientation[k, 0]))):
            shown, aspect = upright(planes[axis], axis, orientation, output_zooms)
            ax = axes[row, column]
            ax.imshow(shown, cmap="gray", vmin=low, vmax=high if high > low else low + 1, aspect=aspect,
                      interpolation="nearest")
            ax.set_title(f"{name}, {PLANE_NAMES[int(orientation[axis, 0])]}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    return path
