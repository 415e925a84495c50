"""Through-plane gain over cubic B-spline against the number of adaptation steps, on held-out real heads.

usage:
  python tools/adaptation_steps.py --heads NAME [NAME ...] [--factors 4 3] [--steps 0 1000 2000]
      [--learning-rate 5e-4] [--keep 0.5 1] [--model PATH] [--tree data/real_volumes]

For each test head of tools/real_volumes.py's tree and each of its thick volumes whose factor is in
--factors, the volume is refined as predict.py --through-plane refines it (through_plane.
super_resolve_through_plane: the same scaling, adaptation, inference, data consistency and clipping), once
per --steps value: 0 is the pretrained model alone (--no-adapt), N > 0 is adaptation for exactly N steps,
with neither a time bound nor the early stop, so that a run repeats whatever the machine's speed or load;
each --keep value (the share of adaptation's weight change kept, predict.py --adapt-keep) is a run of its own.
The gain is scored as tools/through_plane_check.py scores it (PSNR over the whole volume, range = the fine
reference's max - min, against cubic B-spline clipped to the thick volume's range).  One line a run.
Not a test: every adapted run trains for N steps (about 26 ms each on a quiet 2-core EPYC).
"""
import argparse
import json
import os
import sys
import time

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import constants  # noqa: E402
import slice_geometry  # noqa: E402
import through_plane  # noqa: E402
from cli import unit_share  # noqa: E402
from through_plane_check import psnr_against_spline  # noqa: E402  (this folder is on the path when run as a script)


def gain(volume_entry, tree, model, settings):
    """(gain in dB over cubic spline, the run's note) for one thick volume of the tree's split.json."""
    image = nib.load(os.path.join(tree, volume_entry["thick"]))
    thick = image.get_fdata(dtype=np.float32)
    truth = nib.load(os.path.join(tree, volume_entry["reference"])).get_fdata(dtype=np.float64)
    axis, factor = volume_entry["axis"], volume_entry["factor"]
    source = through_plane.ModelSource(model, "auto")
    geometry = slice_geometry.read_geometry(image.header.get_zooms(), thick.shape, axis=axis, factor=factor)
    output, prepared, _, _ = through_plane.super_resolve_through_plane(source, image, thick, geometry, settings)
    note = prepared.note
    model_psnr, spline_psnr = psnr_against_spline(output.astype(np.float64), thick.astype(np.float64), truth,
                                                  axis, factor)
    return model_psnr - spline_psnr, note


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tree", default=os.path.join(ROOT, "data", "real_volumes"),
                        help="the folder tools/real_volumes.py wrote (with split.json)")
    parser.add_argument("--heads", nargs="+", required=True, help="test heads of the tree's split.json")
    parser.add_argument("--factors", nargs="+", type=int, default=[4, 3], help="which of each head's volumes")
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 1000, 2000],
                        help="adaptation steps of each run (0: the pretrained model alone)")
    parser.add_argument("--learning-rate", type=float, default=constants.ADAPT_LEARNING_RATE)
    parser.add_argument("--keep", nargs="+", type=unit_share, default=[None],
                        help="shares of adaptation's weight change kept (None: the network's own)")
    parser.add_argument("--model", default=None,
                        help="a through-plane model instead of pretrained/ (one factor), or quality: the shipped "
                             "quality networks")
    args = parser.parse_args(argv)
    with open(os.path.join(args.tree, "split.json")) as f:
        thick = json.load(f)["thick"]
    unknown = [h for h in args.heads if h not in thick]
    if unknown:
        parser.error(f"--heads: not test heads of {args.tree}: {' '.join(unknown)}")
    if any(n < 0 for n in args.steps):
        parser.error("--steps: each must be 0 or more")
    for head in args.heads:
        for entry in (v for v in thick[head] if v["factor"] in args.factors):
            for steps in args.steps:
                for keep in args.keep if steps > 0 else [None]:
                    settings = through_plane.Settings(adapt=steps > 0, seconds=float("inf"), steps=max(steps, 1),
                                                      learning_rate=args.learning_rate, patience=float("inf"),
                                                      keep=keep)
                    began = time.monotonic()
                    db, note = gain(entry, args.tree, args.model, settings)
                    print(f"{head} x{entry['factor']} axis {entry['axis']} steps {steps:>5} lr "
                          f"{args.learning_rate:g}: gain {db:+.3f} dB ({time.monotonic() - began:.0f} s; {note})",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
