"""Through-plane networks on held-out clinical contrasts: the 1-D prior against cubic B-spline, per contrast.

usage:
  python tools/contrast_through_check.py --model FILE.keras [FILE.keras ...] [--volumes data/contrasts/test_volumes]
      [--t1-slices data/t1_slices/validation] [--step 2] [--precision float32]

The held-out MS scans (FLAIR and T2 of patients no model trained on, which tools/contrast_slices.py copies
into <output-dir>/test_volumes/) are 2D clinical scans: thick between slices, fine in-plane, so their through-plane truth does
not exist.  Their fine in-plane axes stand in for it: each acquisition-plane slice with tissue (every
--step-th; on the scan's robust range, as predict.py scales a volume) is made thick along its rows and, as
a second slice, along its columns (the mean of F rows, a box with no gap, as dataset.make_thick_pair makes
training pairs), refined by the network alone (no per-volume adaptation: this measures what training
changes) and by cubic B-spline (through_plane.refine.cubic_spline), both clipped to [0, 1], and scored by
PSNR on [0, 1].  With --t1-slices, the T1 validation slices (the 4 held-out heads) are scored the same way,
so that no contrast is bought with another.  Prints one line per model and contrast (mean and weakest gain
in dB) and a last JSON line.  Not a test.
"""
import argparse
import glob
import json
import os
import sys

import nibabel as nib
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from contrast_slices import slices_of  # noqa: E402  (this folder is on the path when run as a script)


def contrast_of(path):
    name = os.path.basename(path)
    return "flair" if "FLAIR" in name else "t2" if "T2" in name else "t1"


def held_out_planes(volume_dir, step):
    """{contrast: [[0, 1] float32 planes]} of every held-out scan in `volume_dir`."""
    planes = {}
    for path in sorted(glob.glob(os.path.join(volume_dir, "*.nii.gz"))):
        image = nib.load(path)
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        picked = slices_of(np.asanyarray(image.dataobj), zooms, step, min_tissue=0.2)
        planes.setdefault(contrast_of(path), []).extend(plane.astype(np.float32) / 255.0 for _, plane in picked)
    return planes


def t1_planes(folder, step):
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True))[::step]
    return [np.asarray(Image.open(path).convert("L"), np.float32) / 255.0 for path in paths]


def psnr(estimate, truth):
    """PSNR on [0, 1] of the estimate clipped to [0, 1]."""
    from common import measures
    return measures.psnr(np.clip(estimate, 0, 1), truth)


def gain_on_plane(model, plane, factor):
    """Model PSNR minus cubic B-spline's on one fine [0, 1] plane made thick along its rows (training's
    dataset.make_thick_pair: the rows cut to a multiple of the factor, a box with no gap)."""
    import dataset
    from through_plane import refine
    thick, fine = (np.asarray(x, np.float32)[0, ..., 0] for x in dataset.make_thick_pair(plane[None, ..., None], factor))
    spline = refine.cubic_spline(thick[..., None], 0, fine.shape[0])[..., 0]
    out = np.asarray(model(thick[None, ..., None], training=False), np.float32)[0, ..., 0]
    return psnr(out, fine) - psnr(spline, fine)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True, help="through-plane .keras files to score")
    parser.add_argument("--volumes", default=os.path.join(ROOT, "data", "contrasts", "test_volumes"))
    parser.add_argument("--t1-slices", default=os.path.join(ROOT, "data", "t1_slices", "validation"))
    parser.add_argument("--step", type=int, default=2, help="every step-th slice with tissue")
    parser.add_argument("--precision", default="float32", help="the models' serving precision (float32 here: "
                        "the prior compared, not the speed)")
    args = parser.parse_args(argv)
    from through_plane.model_source import load_model_1d
    import modules
    planes = held_out_planes(args.volumes, args.step)
    if args.t1_slices and os.path.isdir(args.t1_slices):
        planes["t1"] = t1_planes(args.t1_slices, args.step)
    results = {}
    for path in args.model:
        model = load_model_1d(path, precision=args.precision)
        factor = modules.through_plane_factor(model)
        for contrast, group in planes.items():
            gains = [gain_on_plane(model, view, factor) for plane in group for view in (plane, plane.T)]
            results.setdefault(path, {})[contrast] = {"mean": round(float(np.mean(gains)), 3),
                                                      "weakest": round(float(np.min(gains)), 3), "n": len(gains)}
            print(f"{path} x{factor} {contrast}: {np.mean(gains):+.3f} dB mean, weakest {np.min(gains):+.3f} "
                  f"({len(gains)} planes)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
