"""Through-plane gain over cubic B-spline against the number of adaptation steps, on held-out real heads.

usage:
  python tools/adaptation_steps.py --heads NAME [NAME ...] [--factors 4 3] [--steps 0 1000 2000]
      [--learning-rate 5e-4] [--keep 0.5 1] [--model PATH] [--tree data/real_volumes]

For each test head of tools/real_volumes.py's tree and each of its thick volumes whose factor is in
--factors, the volume is refined as predict.py --through-plane refines it (through_plane.
super_resolve_through_plane: the same scaling, inference, data consistency and clipping; adaptation by
adaptation.adapt on the same working grid), once per --steps value: 0 is the pretrained model alone
(--no-adapt), N > 0 is adaptation as predict.py --adapt-steps N adapts (N steps, fewer on volumes over 8M
working voxels: adaptation.adaptation_steps), with neither a time bound nor the early stop, so that a run
repeats whatever the machine's speed or load; each --keep value (the share of adaptation's weight change
kept, predict.py --adapt-keep) is refined with a point between the pretrained and that one adapted model.
Precision: predict.py's default, auto (mixed bfloat16 on AMX or AMD's AVX-512 BF16).
The gain is scored as tools/through_plane_check.py scores it (PSNR over the whole volume, range = the fine
reference's max - min, against cubic B-spline clipped to the thick volume's range).  One line a run.
Not a test: each volume's adaptation trains for up to N steps (quality network: about 0.07-0.1 s each on a
2-core Xeon with AMX), and each run refines the volume (5-20 s).
"""
import argparse
import copy
import json
import os
import sys
import time

import nibabel as nib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common.cli import unit_share  # noqa: E402
from common.tensorflow_env import deterministic_ops  # noqa: E402
import constants  # noqa: E402
import inference  # noqa: E402
import modules  # noqa: E402
from through_plane import adaptation  # noqa: E402
from through_plane import model_source  # noqa: E402
from through_plane import refine  # noqa: E402
from through_plane import slice_geometry  # noqa: E402
from through_plane_check import psnr_against_spline  # noqa: E402  (this folder is on the path when run as a script)

PRECISION = "auto"  # predict.py's default


class InMemoryModel:
    """Serves one model already in memory where through_plane takes a ModelSource."""

    def __init__(self, model, note, precision):
        self.model, self.note, self.precision = model, note, precision

    def starting_model(self, factor):
        return self.model, self.note


def read_volume(volume_entry, tree):
    """(thick image, thick float32 array, fine reference float64 array, geometry) of one entry of split.json."""
    image = nib.load(os.path.join(tree, volume_entry["thick"]))
    thick = image.get_fdata(dtype=np.float32)
    truth = nib.load(os.path.join(tree, volume_entry["reference"])).get_fdata(dtype=np.float64)
    geometry = slice_geometry.read_geometry(image.header.get_zooms(), thick.shape, axis=volume_entry["axis"],
                                            factor=volume_entry["factor"])
    return image, thick, truth, geometry


def gain(volume, source, settings):
    """Gain in dB over cubic spline of one read_volume() refined by predict.py's path with `settings`."""
    image, thick, truth, geometry = volume
    output, _, _, _ = refine.super_resolve_through_plane(source, image, thick, geometry, settings)
    model_psnr, spline_psnr = psnr_against_spline(output.astype(np.float64), thick.astype(np.float64), truth,
                                                  geometry.axis, geometry.factor)
    return model_psnr - spline_psnr


def adapted_model(source, volume, settings):
    """The source's model adapted to the volume as predict.py adapts it, with all of the change kept.

    The volume is scaled and put on its working grid as
    refine.super_resolve_through_plane does it, and adapted by
    refine.prepare_model (settings.steps, scaled by the volume's size);
    each --keep is then a point between the start and this model
    (adaptation.keep_share_of_change), so one adaptation serves them all.
    Returns (model, steps taken).
    """
    _, thick, _, geometry = volume
    thick = inference.finite_copy(thick)[0]  # NaN/Inf replaced as predict.py replaces them
    _, working, _ = refine.scaled_and_working(thick, geometry)
    complete = copy.copy(settings)
    complete.adapt, complete.keep = True, 1.0
    prepared = refine.prepare_model(source, working, geometry, complete, time.monotonic())
    return prepared.model, prepared.steps


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
    deterministic_ops()  # as predict.py --through-plane: the same voxels on every run
    with open(os.path.join(args.tree, "split.json")) as f:
        thick = json.load(f)["thick"]
    unknown = [h for h in args.heads if h not in thick]
    if unknown:
        parser.error(f"--heads: not test heads of {args.tree}: {' '.join(unknown)}")
    if any(n < 0 for n in args.steps):
        parser.error("--steps: each must be 0 or more")
    source = model_source.ModelSource(args.model, PRECISION)
    try:
        refined = source.factors()
    except ValueError as error:
        parser.error(str(error))
    if refined is not None and set(args.factors) - set(refined):
        parser.error(f"--factors: the model refines x{' x'.join(map(str, refined))} only")
    for head in args.heads:
        for entry in (v for v in thick[head] if v["factor"] in args.factors):
            volume = read_volume(entry, args.tree)
            start, origin = source.starting_model(entry["factor"])
            if start is None:
                parser.error(f"{head}: no shipped model refines x{entry['factor']}: give --model")
            network = modules.network_of(start)
            for steps in args.steps:
                began = time.monotonic()
                settings = refine.Settings(adapt=False, seconds=float("inf"), steps=max(steps, 1),
                                                  learning_rate=args.learning_rate, patience=float("inf"))
                if steps == 0:
                    runs = [(None, start)]
                else:
                    adapted, done = adapted_model(source, volume, settings)
                    runs = []
                    for keep in args.keep:
                        keep = settings.for_network(network, volume[3].ratio).keep if keep is None else keep
                        model = modules.inference_model(start, PRECISION)
                        model.set_weights(adaptation.keep_share_of_change(start.get_weights(),
                                                                             adapted.get_weights(), keep))
                        runs.append((keep, model))
                for keep, model in runs:
                    db = gain(volume, InMemoryModel(model, origin, PRECISION), settings)
                    kept = "" if keep is None else f" ({done} steps, {keep:g} of the change kept)"
                    print(f"{head} x{entry['factor']} axis {entry['axis']} steps {steps:>5} lr "
                          f"{args.learning_rate:g}: gain {db:+.3f} dB{kept} ({time.monotonic() - began:.0f} s "
                          "since this volume's steps began)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
