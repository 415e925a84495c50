import os

import numpy as np
import pytest
from PIL import Image

import dataset
from conftest import write_tree
from tensorflow_env import tf


def test_adni_slice_is_padded_at_the_bottom_to_256_square(tmp_path):
    image = np.full((240, 256), 200, np.uint8)
    path = str(tmp_path / "s.jpeg")
    Image.fromarray(image).save(path, quality=100)
    out = dataset.pad_or_crop(dataset.read_slice(path), 256)
    assert out.shape == (256, 256)
    assert np.all(out[240:] == 0)
    assert abs(int(out[:240].mean()) - 200) <= 1


def test_larger_images_are_centre_cropped():
    image = np.zeros((300, 260), np.uint8)
    image[22:278, 2:258] = 9
    assert np.all(dataset.pad_or_crop(image, 256) == 9)


def test_rgb_becomes_its_y_channel(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = str(tmp_path / "c.png")
    Image.fromarray(rgb).save(path)
    y = dataset.read_slice(path)
    expected = tf.image.rgb_to_yuv(rgb[None].astype("float32") / 255.0)[0, ..., 0].numpy() * 255
    assert y.shape == (8, 8)
    assert np.allclose(y, expected, atol=1.0)


def test_sixteen_bit_and_palette_images_read_as_8_bit_y(tmp_path):
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(wide).save(tmp_path / "w.png")
    y = dataset.read_slice(str(tmp_path / "w.png"))
    assert y.dtype == np.uint8 and y.max() == 255 and y[0, 0] == 0
    Image.fromarray(np.full((8, 8), 77, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert np.all(dataset.read_slice(str(tmp_path / "p.png")) == 77)


def test_pairs_are_area_downsampled_y_in_unit_range():
    image = np.random.default_rng(0).integers(0, 256, (2, 256, 256), dtype=np.uint8)
    low_res, target = next(iter(dataset.make_eval_dataset(image, 2)))
    assert low_res.shape == (2, 64, 64, 1) and target.shape == (2, 256, 256, 1)
    assert np.allclose(target[..., 0], image / 255.0)
    block_means = (image / 255.0).reshape(2, 64, 4, 64, 4).mean(axis=(2, 4))
    assert np.allclose(low_res[..., 0], block_means, atol=1e-6)


def test_training_crops_are_consistent_pairs_inside_tissue():
    images = np.zeros((3, 256, 256), np.uint8)
    images[:, 100:160, 120:200] = 180
    data = dataset.make_training_dataset(images, batch_size=4, patch=32, patches_per_image=4, augment=False)
    batches = list(data)
    assert sum(int(b[0].shape[0]) for b in batches) == 12
    for low_res, target in batches:
        assert low_res.shape[1:] == (8, 8, 1) and target.shape[1:] == (32, 32, 1)
        assert np.allclose(low_res, dataset.downsample(target), atol=1e-6)
        assert np.all(tf.reduce_max(target, axis=[1, 2, 3]) > 0)  # every crop holds tissue


def test_augmented_pairs_stay_exact_pairs_up_to_8_bit_rounding():
    images = np.random.default_rng(1).integers(0, 256, (2, 256, 256), dtype=np.uint8)
    low_res, target = next(iter(dataset.make_training_dataset(images, 4, patch=64, augment=True)))
    assert np.all((target >= 0) & (target <= 1))
    assert np.abs(low_res - dataset.downsample(target)).max() <= 0.5 / 255 + 1e-6


def test_reads_an_ad_nc_tree_and_splits_80_20_with_a_fixed_seed(tmp_path):
    root = write_tree(tmp_path / "AD_NC", n_train=10, n_test=2, suffix=".jpg")
    dataset.check_data_dir(root)
    paths = dataset.list_images(os.path.join(root, "train"))
    assert len(paths) == 10 and {os.path.basename(os.path.dirname(p)) for p in paths} == {"AD", "NC"}
    train, val = dataset.split_train_validation(paths, 0.2, 1337)
    assert len(val) == 2 and not set(train) & set(val)
    assert (train, val) == dataset.split_train_validation(list(reversed(paths)), 0.2, 1337)
    split = dataset.load_slices(train, progress=False)
    assert split.images.shape == (8, 256, 256) and split.images.dtype == np.uint8


@pytest.mark.parametrize("missing", ["train", "test"])
def test_data_dir_without_a_split_is_refused(tmp_path, missing):
    root = write_tree(tmp_path / "AD_NC", n_train=2, n_test=2)
    import shutil
    shutil.rmtree(os.path.join(root, missing))
    with pytest.raises(ValueError, match=f"no {missing}/"):
        dataset.check_data_dir(root)


def test_embedded_sample_is_built_from_the_template_with_separated_slabs(tmp_path):
    root = str(tmp_path / "data" / "AD_NC")
    counts = dataset.build_sample_dataset(root)
    train = dataset.list_images(os.path.join(root, "train"))
    test = dataset.list_images(os.path.join(root, "test"))
    assert counts == {"train": len(train), "test": len(test)} and len(test) >= 20 and len(train) >= 200
    with Image.open(test[0]) as image:
        assert image.size == (256, 240) and image.mode == "L"
    assert {os.path.basename(os.path.dirname(p)) for p in train} == {"axial", "coronal", "sagittal"}
    below, slab, above = dataset.sample_slab_ranges(189)
    assert below[1] <= slab[0] - 6 and above[0] >= slab[1] + 6
    assert [name for name in os.listdir(tmp_path / "data")] == ["AD_NC"]  # no temporary folder left


def test_epochs_in_a_row_are_full_batches_and_a_resumed_run_sees_the_same_data():
    images = np.random.default_rng(2).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    kwargs = dict(batch_size=4, patch=16, patches_per_image=2, augment=True, seed=7)
    whole_run = list(dataset.make_training_dataset(images, epochs=3, **kwargs))
    assert len(whole_run) == 3 * (10 // 4)  # per epoch: 10 crops -> 2 full batches, remainder dropped
    assert all(target.shape == (4, 16, 16, 1) for _, target in whole_run)
    resumed = list(dataset.make_training_dataset(images, epochs=2, first_epoch=1, **kwargs))
    for (low_a, target_a), (low_b, target_b) in zip(whole_run[2:], resumed, strict=True):
        assert np.array_equal(low_a, low_b) and np.array_equal(target_a, target_b)
    assert not np.array_equal(whole_run[0][1], whole_run[2][1])  # each epoch draws new crops


def test_an_epoch_uses_every_slice_patches_per_image_times():
    images = np.zeros((6, 64, 64), np.uint8)
    for k in range(6):
        images[k, 20:40, 20:40] = 10 * (k + 1)  # each slice's tissue has its own grey level
    batches = dataset.make_training_dataset(images, 3, patch=16, patches_per_image=2, augment=False, seed=3)
    levels = [int(round(float(tf.reduce_max(t)) * 255)) for _, target in batches for t in target]
    assert sorted(levels) == sorted(10 * (k + 1) for k in range(6) for _ in range(2))


def test_pipeline_parallelism_does_not_change_the_data():
    images = np.random.default_rng(4).integers(0, 256, (6, 64, 64), dtype=np.uint8)
    runs = [list(dataset.make_training_dataset(images, 4, patch=16, seed=5, epochs=2, parallel=parallel))
            for parallel in (1, 3)]
    assert len(runs[0]) == len(runs[1]) == 2 * (12 // 4)
    for (low_a, target_a), (low_b, target_b) in zip(*runs):
        assert np.array_equal(low_a, low_b) and np.array_equal(target_a, target_b)


def test_large_images_are_tiled_and_small_ones_padded():
    image = np.random.default_rng(6).integers(0, 256, (300, 600), dtype=np.uint8)
    tiles = dataset.tiles_of(image, 256)
    assert len(tiles) == 2 * 3 and all(tile.shape == (256, 256) for tile in tiles)
    assert np.array_equal(tiles[0], image[:256, :256])
    assert np.array_equal(tiles[5][:44, :88], image[256:, 512:]) and not tiles[5][44:].any()
    small = image[:100, :200]
    (only,) = dataset.tiles_of(small, 256)
    assert np.array_equal(only, dataset.pad_or_crop(small, 256))
