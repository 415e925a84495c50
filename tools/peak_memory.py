"""Peak memory (RSS) of predict.py on large inputs: a 4000x4000 PNG and a 512x512x48 int16 volume.

usage: python tools/peak_memory.py [--keep DIR]

Each case runs predict.py --input in its own process (TensorFlow start-up
included) and reports the process's peak resident memory from the kernel
(wait4's ru_maxrss), its exit status, time and the output's own size.  Not a
test: it takes a minute or two and its figures depend on the machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_png(folder, mode):
    rng = np.random.default_rng(0)
    base = (rng.random((500, 500)) * 255).astype(np.uint8)
    values = np.kron(base, np.ones((8, 8), np.uint8))  # 4000x4000, smooth-ish
    path = os.path.join(folder, f"big_{mode}.png")
    Image.fromarray(values).convert(mode).save(path)
    return path


def make_volume(folder):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3000, (512, 512, 48)).astype(np.int16)
    path = os.path.join(folder, "big_int16.nii.gz")
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 3.0, 1.0])), path)
    return path


def run_predict(path, out_dir):
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "predict.py"), "--input", path,
                             "--output-dir", out_dir], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    outputs = [os.path.join(out_dir, name) for name in os.listdir(out_dir)]
    return {"input": os.path.basename(path), "exit": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 2),
            "output_file_mib": round(sum(os.path.getsize(p) for p in outputs) / 2 ** 20, 1),
            "stderr_tail": stderr.strip().splitlines()[-1:] }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="keep the inputs and outputs in this folder")
    args = parser.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="peak_memory_")
    os.makedirs(folder, exist_ok=True)
    cases = [make_png(folder, "L"), make_png(folder, "RGB"), make_volume(folder)]
    for path in cases:
        out_dir = os.path.join(folder, "out_" + os.path.basename(path).split(".")[0])
        os.makedirs(out_dir, exist_ok=True)
        print(json.dumps(run_predict(path, out_dir)), flush=True)
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
