"""Tiny training runs' inputs and outputs, for the test suite and tools/stress_stops.py.

AD_NC-style trees of brain-like synthetic slices written as real image files,
and the epochs a run's history.csv holds.  Nothing of the project imports it;
it sits at the root so that the suite and the tools share one copy.
"""
import csv
import os

import numpy as np
from PIL import Image


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
