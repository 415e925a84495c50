"""train.py's TensorBoard logs (issue 31 item 3), read back with TensorFlow's own event reader."""
import glob
import os

from conftest import run_script
from common.tensorflow_env import tf


def logged(folder):
    """{tag: {step: value}} of the scalars, and the steps with an image, in every event file under `folder`."""
    scalars, images = {}, set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    images.add(event.step)
                else:
                    scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars, images


def test_two_epochs_leave_loss_psnr_and_an_image_in_tensorboard_logs(tmp_path, tiny_tree):
    out = tmp_path / "out"
    result = run_script("train.py", "--data-dir", tiny_tree, "--output-dir", str(out), "--epochs", "2",
                        "--batch-size", "2", "--patch-size", "32", "--precision", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    scalars, images = logged(str(out / "logs"))
    history = [line.split(",") for line in open(out / "history.csv").read().split()[1:]]
    for tag in ("loss", "val_psnr", "val_ssim", "learning_rate"):
        assert sorted(scalars[tag]) == [1, 2], (tag, scalars.get(tag))
    assert abs(scalars["val_psnr"][2] - float(history[1][3])) < 1e-3  # the same numbers as history.csv
    assert images == {1}
