"""Shared test helpers: tiny AD_NC trees of real image files, made per test."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project's modules, for in-process tests


def brain_like(width, height, seed):
    """A smooth bright ellipse with some structure on black, uint8 (height, width)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height / 2 + rng.uniform(-8, 8), width / 2 + rng.uniform(-8, 8)
    r = ((yy - cy) / (0.38 * height)) ** 2 + ((xx - cx) / (0.32 * width)) ** 2
    image = np.where(r < 1, 140 + 60 * np.sin(xx / rng.uniform(3, 7)) * np.cos(yy / rng.uniform(3, 7)), 0)
    return np.clip(image, 0, 255).astype(np.uint8)


SPLIT_SEEDS = {"train": 0, "test": 1000}  # fixed per split: the same images on every run (hash() is salted)


def write_tree(root, n_train=6, n_test=3, size=(256, 240), classes=("AD", "NC"), suffix=".png"):
    """<root>/{train,test}/<class>/<subject>_<slice>.png of brain-like slices; returns root.

    Every file is a subject of its own (s000_0, s001_0, ...), so a tree of n
    files has n groups for the validation split.
    """
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            folder = os.path.join(root, split, classes[i % len(classes)])
            os.makedirs(folder, exist_ok=True)
            image = Image.fromarray(brain_like(*size, seed=SPLIT_SEEDS[split] + i))
            image.save(os.path.join(folder, f"{split[:2]}{i:03d}_0{suffix}"))
    return str(root)


def history_epochs(out):
    """The epoch numbers in <out>/history.csv, in file order ([] before the first epoch is saved)."""
    path = os.path.join(out, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.fixture
def tiny_tree(tmp_path):
    return write_tree(tmp_path / "AD_NC")


def run_script(*args, timeout=600, cwd=None, env=None):
    """Runs a project script in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


# --- Scores computed without the project's code, to check the numbers it reports -------------------------

def area_downsample(plane, factor=4):
    """(H, W) -> (H / factor, W / factor): the mean of each factor x factor block (sides cut to multiples)."""
    height, width = plane.shape[0] // factor, plane.shape[1] // factor
    return plane[:height * factor, :width * factor].reshape(height, factor, width, factor).mean(axis=(1, 3))


def bicubic_upscale(plane, factor=4):
    """Pillow's bicubic resize (Keys, a = -0.5, on pixel centres) of a [0, 1] plane, clipped to [0, 1]."""
    image = Image.fromarray(np.asarray(plane, np.float32), mode="F")
    return np.clip(np.asarray(image.resize((image.width * factor, image.height * factor), Image.BICUBIC)), 0, 1)


def psnr_and_ssim(output, original):
    """PSNR as 10 log10(1 / MSE) (capped at constants.PSNR_CAP_DB) and SSIM as tf.image.ssim, of [0, 1] planes."""
    import constants
    from tensorflow_env import tf

    mse = np.mean((np.asarray(output, np.float64) - original) ** 2)
    psnr = min(10 * np.log10(1 / mse), constants.PSNR_CAP_DB) if mse > 0 else constants.PSNR_CAP_DB
    ssim = float(tf.image.ssim(np.asarray(output, np.float32)[None, ..., None],
                               np.asarray(original, np.float32)[None, ..., None], max_val=1.0)[0])
    return psnr, ssim
