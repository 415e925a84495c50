import os

import numpy as np
from PIL import Image

import dataset
import train
from training import synthetic_heads
from conftest import run_script, write_tree


def test_training_blocks_leave_out_the_test_slab_and_its_gaps():
    depth = 189
    maps = {name: np.broadcast_to(np.arange(depth, dtype=np.float32), (3, 4, depth)) for name in ("grey", "white", "csf")}
    blocks = synthetic_heads.training_blocks(maps)
    used = np.concatenate([block["grey"][0, 0] for block in blocks]).astype(int)
    ranges = dataset.sample_slab_ranges(depth)
    assert len(blocks) == 2 and used.size > 0
    gap = dataset.constants.SAMPLE_GAP_SLICES
    for start, stop in ranges["test"] + ranges["validation"]:
        assert not np.any((used >= start - gap) & (used < stop + gap))


def test_shells_surround_the_brain_and_weights_sum_to_one():
    brain = np.zeros((40, 40, 40), np.float32)
    brain[12:28, 12:28, 12:28] = 1.0
    maps = {"grey": brain * 0.5, "white": brain * 0.5, "csf": np.zeros_like(brain)}
    weights = synthetic_heads.head_weights(maps, np.random.default_rng(0), ((4, 4),) * 3)
    total = sum(weights.values())
    assert np.allclose(total, 1.0, atol=1e-3)
    assert weights["bone"].max() > 0.5 and weights["fat"].max() > 0.9  # thin shells: partial volume
    assert weights["background"][0, 0, 0] > 0.99 and weights["bone"][24, 24, 24] < 1e-3


def test_degraded_plane_is_a_noisy_square_in_unit_range_and_seeded():
    plane = np.zeros((180, 200), np.float32)
    plane[40:140, 50:150] = 0.7
    one = synthetic_heads.degrade_plane(plane, np.random.default_rng(3), size=128)
    two = synthetic_heads.degrade_plane(plane, np.random.default_rng(3), size=128)
    assert one.shape == (128, 128) and np.array_equal(one, two)
    assert one.min() >= 0.0 and one.max() <= 1.0
    assert one[:5, :5].max() > 0.0  # Rician noise reaches the background too


def test_cli_writes_8_bit_slices(tmp_path):
    result = run_script("-m", "training.synthetic_heads", "--output-dir", str(tmp_path / "syn"), "--variants", "1",
                        "--step", "60")
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(tmp_path / "syn"))
    assert names and f"wrote {len(names)} synthetic head slices" in result.stdout
    image = np.asarray(Image.open(tmp_path / "syn" / names[0]))
    assert image.dtype == np.uint8 and image.shape == (256, 256)


def test_several_extra_train_dirs_all_join_training(tmp_path):
    data_dir = write_tree(tmp_path / "AD_NC")
    extras = []
    for name, count in (("a", 2), ("b", 3)):
        os.makedirs(tmp_path / name)
        for i in range(count):
            Image.fromarray(np.full((64, 64), 100 + i, np.uint8)).save(tmp_path / name / f"{i}.png")
        extras.append(str(tmp_path / name))
    args = train.parse_args(["--data-dir", data_dir, "--extra-train-dir", *extras])
    split = dataset.train_validation_paths(data_dir, args.validation_split, args.seed)
    plain, _ = train.load_data(train.parse_args(["--data-dir", data_dir]), split)
    with_extras, _ = train.load_data(args, split)
    assert len(with_extras.paths) == len(plain.paths) + 5
