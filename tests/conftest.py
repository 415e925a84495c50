"""Shared test helpers: tiny AD_NC trees of real image files, made per test."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project's modules, for in-process tests
from training.toy_runs import brain_like, history_epochs, write_tree  # noqa: E402,F401  (the tests' tiny trees)


@pytest.fixture
def tiny_tree(tmp_path):
    return write_tree(tmp_path / "AD_NC")


def import_tool(monkeypatch, name):
    """tools/<name>.py imported as a module, as its own folder sees it (tools import each other by name)."""
    import importlib
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    return importlib.import_module(name)


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
    from common.tensorflow_env import tf

    mse = np.mean((np.asarray(output, np.float64) - original) ** 2)
    psnr = min(10 * np.log10(1 / mse), constants.PSNR_CAP_DB) if mse > 0 else constants.PSNR_CAP_DB
    ssim = float(tf.image.ssim(np.asarray(output, np.float32)[None, ..., None],
                               np.asarray(original, np.float32)[None, ..., None], max_val=1.0)[0])
    return psnr, ssim
