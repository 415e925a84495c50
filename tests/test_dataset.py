import os

import numpy as np
import pytest
from PIL import Image

import dataset
from conftest import write_tree
from common.tensorflow_env import tf


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


def test_a_group_is_the_name_up_to_its_last_underscore():
    assert dataset.group_of("AD/123_S_0456_077.jpeg") == "123_S_0456"
    assert dataset.group_of("NC/scan.png") == "scan" and dataset.group_of("x/_7.png") == "_7"


def test_every_slice_of_a_subject_lands_on_one_side():
    paths = [f"{cls}/subject{s}_{k:03d}.jpeg" for s in range(10) for k in range(20) for cls in ["AD" if s % 2 else "NC"]]
    train, val = dataset.split_train_validation(paths, 0.2, 1337)
    train_groups, val_groups = {dataset.group_of(p) for p in train}, {dataset.group_of(p) for p in val}
    assert len(val_groups) == 2 and not train_groups & val_groups and len(val) == 2 * 20
    assert (train, val) == dataset.split_train_validation(list(reversed(paths)), 0.2, 1337)
    assert dataset.split_train_validation(paths, 0.2, 7) != (train, val)  # the seed picks the groups


def test_one_group_leaves_no_validation_and_says_so(tmp_path, capsys):
    for k in range(4):
        folder = tmp_path / "AD_NC" / "train" / "AD"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), k, np.uint8)).save(folder / f"subject_{k}.png")
    train, val = dataset.train_validation_paths(str(tmp_path / "AD_NC"))
    assert len(train) == 4 and val == []
    warning = capsys.readouterr().err
    assert warning.startswith("warning: --data-dir") and "validation/" in warning and len(warning.splitlines()) == 1


def test_a_validation_folder_is_the_validation_split(tmp_path):
    root = write_tree(tmp_path / "AD_NC", n_train=4, n_test=2)
    os.makedirs(os.path.join(root, "validation", "AD"))
    with pytest.raises(ValueError, match="no images in validation/"):
        dataset.check_data_dir(root)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, "validation", "AD", "v_0.png"))
    train, val = dataset.train_validation_paths(root, 0.5)
    assert len(train) == 4 and [os.path.basename(p) for p in val] == ["v_0.png"]


@pytest.mark.parametrize("missing", ["train", "test"])
def test_data_dir_without_a_split_is_refused(tmp_path, missing):
    root = write_tree(tmp_path / "AD_NC", n_train=2, n_test=2)
    import shutil
    shutil.rmtree(os.path.join(root, missing))
    with pytest.raises(ValueError, match=f"no {missing}/"):
        dataset.check_data_dir(root)


def test_sample_splits_are_slabs_apart_and_the_test_slab_is_where_it_was():
    slabs = dataset.sample_slab_ranges(189)
    assert slabs["test"] == [(75, 113)]  # as before validation slabs existed: held-out figures stay comparable
    ordered = sorted((low, high) for ranges in slabs.values() for low, high in ranges)
    assert ordered[0][0] == 0 and ordered[-1][1] == 189
    assert all(later[0] - earlier[1] >= 6 for earlier, later in zip(ordered, ordered[1:]))  # a gap between each
    assert [split for low, _ in ordered for split, ranges in slabs.items() if (low, _) in ranges] == [
        "train", "validation", "test", "validation", "train"]


def test_an_outdated_embedded_sample_is_rebuilt_with_validation_slabs(tmp_path):
    root = str(tmp_path / "data" / "AD_NC")
    old = os.path.join(root, "train", "axial")  # the first sample: no marker, validation split from train/
    os.makedirs(old)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(old, "mni152_axial_0001.png"))
    assert dataset.sample_version(root) == 1
    dataset.ensure_default_data(root)
    assert dataset.sample_version(root) == dataset.SAMPLE_VERSION
    train = dataset.list_images(os.path.join(root, "train"))
    val = dataset.list_images(os.path.join(root, "validation"))
    test = dataset.list_images(os.path.join(root, "test"))
    assert len(test) == 38 and len(val) >= 30 and len(train) >= 200 and not os.path.exists(
        os.path.join(old, "mni152_axial_0001.png"))
    with Image.open(test[0]) as image:
        assert image.size == (256, 240) and image.mode == "L"
    assert {os.path.basename(os.path.dirname(p)) for p in train} == {"axial", "coronal", "sagittal"}
    assert {os.path.basename(os.path.dirname(p)) for p in val} == {"axial"}
    assert dataset.train_validation_paths(root) == (train, val)
    assert os.listdir(tmp_path / "data") == ["AD_NC"]  # no temporary folder left


def test_a_users_tree_is_never_taken_for_the_sample(tmp_path):
    root = write_tree(tmp_path / "AD_NC", n_train=2, n_test=1)
    assert dataset.sample_version(root) is None
    dataset.ensure_default_data(root)
    assert sorted(os.listdir(root)) == ["test", "train"]


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
