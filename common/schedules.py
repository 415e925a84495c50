"""The one cosine learning-rate curve: from the full rate down to constants.LR_FLOOR of it.

Per-volume adaptation (through_plane/adaptation.py) and the GPU stage (tools/accelerator_stage.py,
which runs where TensorFlow is not installed) call cosine_factor; train.py runs the same curve through
Keras' own CosineDecay with alpha = LR_FLOOR (modules.cosine_schedule; tests/test_modules.py checks that
the two agree).
"""
import math

import constants


def cosine_factor(share):
    """The learning rate's factor at `share` (0 to 1, clipped) of a run: 1 at the start, LR_FLOOR at the end."""
    share = min(max(share, 0.0), 1.0)
    return constants.LR_FLOOR + (1 - constants.LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * share))
