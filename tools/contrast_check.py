"""In-plane x4 gain over bicubic on the held-out clinical-contrast slices of tools/contrast_slices.py, per contrast.

usage:
  python tools/contrast_check.py [--slices data/contrasts/test] [--model quality|espcn|FILE.keras ...]
      [--work-dir output/contrast_check] [--precision auto]

Each held-out slice (FLAIR and T2 of MS patients no model trained on, EPI of a subject no model trained on)
is cut to a multiple of 4, area-downsampled x4 into an 8-bit PNG, super-resolved by `python predict.py --input`
with each --model (8 views, predict.py's default for images), and scored as tools/proxy_check.py scores its
slices: PSNR of the 8-bit output against the original, minus bicubic's.  Prints one line per model and
contrast (mean and weakest gain) and a last JSON line.  Not a test.
"""
import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_check import area_downsample, bicubic_8bit, crop_to_factor, psnr_8bit, run_predict  # noqa: E402


def gains(model, originals, work_dir, precision):
    """{name: gain in dB} of one model on the slices {name: 8-bit original}."""
    inputs = []
    for name, original in originals.items():
        path = os.path.join(work_dir, f"{name}.png")
        Image.fromarray(area_downsample(original)).save(path)
        inputs.append(path)
    out_dir = os.path.join(work_dir, "out_" + os.path.basename(model or "default").replace(".keras", ""))
    shutil.rmtree(out_dir, ignore_errors=True)  # outputs name their network: none of an earlier run may be read
    run_predict(model, inputs, out_dir, precision)
    found = {}
    for name, original in originals.items():
        low_res = np.asarray(Image.open(os.path.join(work_dir, f"{name}.png")))
        output = np.asarray(Image.open(glob.glob(os.path.join(out_dir, f"{name}_*x4.png"))[0]))
        found[name] = psnr_8bit(output, original) - psnr_8bit(bicubic_8bit(low_res), original)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--slices", default=os.path.join(ROOT, "data", "contrasts", "test"))
    parser.add_argument("--model", nargs="+", default=["quality", "espcn"])
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "output", "contrast_check"))
    parser.add_argument("--precision", default=None)
    args = parser.parse_args(argv)
    originals = {f"{contrast}__{os.path.splitext(name)[0]}": crop_to_factor(np.asarray(Image.open(
        os.path.join(args.slices, contrast, name)).convert("L")))
        for contrast in sorted(os.listdir(args.slices)) for name in sorted(os.listdir(os.path.join(args.slices,
                                                                                                      contrast)))}
    if not originals:
        parser.error(f"--slices {args.slices}: no slices (run tools/contrast_slices.py)")
    os.makedirs(args.work_dir, exist_ok=True)
    record = {}
    for model in args.model:
        found = gains(model, originals, args.work_dir, args.precision)
        record[model] = {"slices": {name: round(gain, 3) for name, gain in found.items()}}
        for contrast in sorted({name.split("__")[0] for name in found}):
            values = [gain for name, gain in found.items() if name.startswith(contrast + "__")]
            record[model][contrast] = {"mean": round(float(np.mean(values)), 3), "min": round(float(np.min(values)), 3),
                                       "n": len(values)}
            print(f"{model:<40} {contrast:<6} mean {np.mean(values):+.2f} dB  weakest {np.min(values):+.2f} dB  "
                  f"({len(values)} slices)")
        everything = list(found.values())
        record[model]["all"] = {"mean": round(float(np.mean(everything)), 3), "min": round(float(np.min(everything)), 3)}
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
