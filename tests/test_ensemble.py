"""Self-ensemble (--ensemble): the mean of the model over flips and quarter turns, and predict.py's defaults."""
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common.tensorflow_env import keras
import constants
import inference
import modules
import predict


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(11)
    return modules.get_model(4)


@pytest.mark.parametrize("ensemble", [2, 4, 8])
def test_ensemble_is_the_mean_of_the_model_over_the_views(model, ensemble):
    plane = np.random.default_rng(12).random((37, 53)).astype(np.float32)
    expected = np.mean([inference.unviewed(inference.upscale_plane(model, np.ascontiguousarray(
        inference.viewed(plane, view))), view) for view in inference.DIHEDRAL_VIEWS[:ensemble]], axis=0)
    # tiles, odd batch sizes and non-square edge tiles must not change it
    for tile, batch_size in ((64, None), (16, 3), (11, 1)):
        got = inference.upscale_plane(model, plane, batch_size, tile, ensemble)
        np.testing.assert_allclose(got, expected, atol=2e-6)
    single = inference.upscale_plane(model, plane)
    assert np.abs(got - single).max() > 1e-3  # an untrained net is far from flip-equivariant: views differ


def test_views_are_undone_by_unviewed():
    image = np.arange(12.0).reshape(3, 4)
    shapes = set()
    for view in inference.DIHEDRAL_VIEWS:
        shapes.add(inference.viewed(image, view).shape)
        np.testing.assert_array_equal(inference.unviewed(inference.viewed(image, view), view), image)
    assert shapes == {(3, 4), (4, 3)}
    assert len({inference.viewed(image, view).tobytes() for view in inference.DIHEDRAL_VIEWS}) == 8


def test_other_ensemble_sizes_are_refused(model):
    with pytest.raises(ValueError, match="--ensemble"):
        inference.upscale_plane(model, np.zeros((8, 8), np.float32), ensemble=3)


def outputs(tmp_path, name, inputs, *flags):
    out = tmp_path / name
    assert predict.main(["--input", *inputs, "--output-dir", str(out), *flags]) == 0
    return out


def test_predict_defaults_ensemble_images_but_not_volumes(tmp_path):
    """predict.py's defaults as a user meets them: its default network (the quality network), 8 views for images,
    1 for volumes."""
    assert constants.ENSEMBLE_IMAGES == 8 and constants.ENSEMBLE_VOLUMES == 1
    rng = np.random.default_rng(13)
    png, nifti = tmp_path / "slice.png", tmp_path / "volume.nii.gz"
    Image.fromarray(rng.integers(0, 256, (20, 28), dtype=np.uint8)).save(png)
    nib.save(nib.Nifti1Image(rng.integers(0, 1000, (20, 28, 3)).astype(np.int16), np.eye(4)), nifti)
    runs = {flags: outputs(tmp_path, "_".join(flags) or "default", [str(png), str(nifti)], *flags)
            for flags in ((), ("--ensemble", "1"), ("--ensemble", "8"))}

    def png_of(run):
        return np.asarray(Image.open(runs[run] / "slice_quality_x4.png")).astype(int)

    def nifti_of(run):
        return np.asanyarray(nib.load(runs[run] / "volume_quality_x4.nii.gz").dataobj).astype(int)

    assert np.array_equal(png_of(()), png_of(("--ensemble", "8")))
    assert not np.array_equal(png_of(()), png_of(("--ensemble", "1")))
    assert np.array_equal(nifti_of(()), nifti_of(("--ensemble", "1")))
    assert not np.array_equal(nifti_of(()), nifti_of(("--ensemble", "8")))
