"""The one numpy PSNR of the project (the training metric is modules.psnr, TensorFlow's)."""
import math

import numpy as np

import constants


def psnr(estimate, truth, peak=1.0):
    """PSNR in dB of `estimate` against `truth` for a signal peak of `peak`.

    float64 arithmetic; capped at constants.PSNR_CAP_DB, which a perfect
    estimate also gets.  Callers choose the peak: 1 for [0, 1] images, 255 for
    8-bit ones, the reference's max - min for volumes in real units.
    """
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)) ** 2))
    return min(constants.PSNR_CAP_DB, 10.0 * math.log10(peak ** 2 / mse)) if mse > 0 else constants.PSNR_CAP_DB
