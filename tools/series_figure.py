"""The README's DICOM figure: a series and predict.py's output, one slice and one reformatted plane.

usage:
  python tools/series_figure.py INPUT_SERIES_DIR OUTPUT_SERIES_DIR FIGURE.png [--slice K] [--row J]

Both folders are read with this project's own reader (dicom_series.find_series / load_series), so the
figure shows the output on its own geometry: top, slice K of the input (each voxel drawn as a block) and
the output's slice at the same place; bottom, the reformatted plane through row J across the slices; each
cut to --size input pixels around the centre (the output's matching region), so the detail shows.
"""
import argparse
import os
import sys

import numpy as np
from matplotlib.figure import Figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from scans import dicom_series  # noqa: E402


def read_series(folder):
    """(float32 volume, voxel sizes) of the one image series in `folder`."""
    series, _ = dicom_series.find_series([os.path.join(folder, name) for name in sorted(os.listdir(folder))])
    if len(series) != 1:
        raise SystemExit(f"{folder}: expected one image series, found {len(series)}")
    image = dicom_series.load_series(series[0])
    return np.asarray(image.dataobj, np.float32), image.header.get_zooms()[:3]


def panel(ax, plane, zooms, title, low, high):
    """One plane (axis 0 across, axis 1 down) drawn with its voxels' aspect ratio."""
    ax.imshow(plane.T, cmap="gray", vmin=low, vmax=high, interpolation="nearest", aspect=zooms[1] / zooms[0])
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("figure")
    parser.add_argument("--slice", type=int, default=None, help="input slice (default: the middle one)")
    parser.add_argument("--row", type=int, default=None, help="input row of the reformatted plane (default: middle)")
    parser.add_argument("--size", type=int, default=96, help="input pixels shown along each in-plane axis")
    args = parser.parse_args(argv)
    low_res, low_zooms = read_series(args.input)
    high_res, high_zooms = read_series(args.output)
    factors = [round(h / l) for h, l in zip(high_res.shape, low_res.shape)]
    k = low_res.shape[2] // 2 if args.slice is None else args.slice
    j = low_res.shape[1] // 2 if args.row is None else args.row
    low, high = np.percentile(low_res, [0.5, 99.5])
    fig = Figure(figsize=(8, 8))
    axes = fig.subplots(2, 2)
    fine_k = k * factors[2] + factors[2] // 2
    fine_j = j * factors[1] + factors[1] // 2
    cut = [slice(max(0, n // 2 - args.size // 2), n // 2 + args.size // 2) for n in low_res.shape[:2]]
    fine = [slice(c.start * f, c.stop * f) for c, f in zip(cut, factors)]
    panel(axes[0, 0], low_res[cut[0], cut[1], k], low_zooms[:2],
          f"input slice {k} ({low_res.shape[0]}x{low_res.shape[1]}), centre", low, high)
    panel(axes[0, 1], high_res[fine[0], fine[1], fine_k], high_zooms[:2],
          f"output ({high_res.shape[0]}x{high_res.shape[1]}), centre", low, high)
    panel(axes[1, 0], low_res[cut[0], j, :], (low_zooms[0], low_zooms[2]), f"input, reformatted at row {j}", low, high)
    panel(axes[1, 1], high_res[fine[0], fine_j, :], (high_zooms[0], high_zooms[2]), "output, reformatted", low, high)
    fig.tight_layout()
    fig.savefig(args.figure, dpi=100)
    print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
