"""tools/contrast_through_check.py: a plane made thick along its rows, scored against cubic B-spline."""
import numpy as np
import pytest

from conftest import import_tool


@pytest.fixture
def check(monkeypatch):
    return import_tool(monkeypatch, "contrast_through_check")


def test_a_network_that_returns_the_truth_gains_what_the_spline_loses_and_the_spline_itself_gains_nothing(check):
    import dataset
    from through_plane import refine

    rng = np.random.default_rng(3)
    plane = np.clip(rng.normal(0.5, 0.2, (30, 20)), 0, 1).astype(np.float32)  # 30 rows: cut to 28 at x4
    fine = plane[:28]
    thick = np.asarray(dataset.make_thick_pair(fine[None, ..., None], 4)[0])[0, ..., 0]
    np.testing.assert_allclose(thick, fine.reshape(7, 4, 20).mean(axis=1), atol=1e-6)
    spline = refine.cubic_spline(thick[..., None], 0, 28)[..., 0]

    def oracle(batch, training=False):
        assert batch.shape == (1, 7, 20, 1)
        return fine[None, ..., None]

    def spline_model(batch, training=False):
        return spline[None, ..., None]

    expected = check.psnr(fine, fine) - check.psnr(spline, fine)
    assert expected > 20
    assert check.gain_on_plane(oracle, plane, 4) == pytest.approx(expected)
    assert check.gain_on_plane(spline_model, plane, 4) == pytest.approx(0.0, abs=1e-9)


def test_held_out_scans_are_grouped_by_contrast_from_their_names(check):
    assert [check.contrast_of(name) for name in ("patient04_study1_FLAIR.nii.gz", "patient04_study1_T2W.nii.gz")] \
        == ["flair", "t2"]
