"""TensorBoard logs of a training run: <output-dir>/logs, one point an epoch (`tensorboard --logdir DIR/logs`).

Written with TensorFlow's own summary ops (`tf.summary.write` with the
scalar and image plugins' metadata): `tf.summary.scalar` and `.image` live in
the tensorboard package, which TensorFlow no longer installs, and writing
needs TensorFlow alone; viewing needs `pip install tensorboard`.  Each epoch adds, at step
= its number (1, 2, ...): loss, val_loss, val_psnr, val_ssim and
learning_rate; every constants.TENSORBOARD_IMAGE_EVERY epochs (and the first)
a comparison image of validation slices (input, nearest-neighbour upscaled |
model | original).  An epoch is logged only after its backup is written, so a
resumed run continues the same logs from its next epoch and never logs one
twice.
"""
import os

from common.tensorflow_env import tf
import constants

SCALARS = ("loss", "val_loss", "val_psnr", "val_ssim", "learning_rate")


class TrainingLog:
    """The run's TensorBoard writer (the chief's only: workers of one run write nothing)."""

    def __init__(self, output_dir, chief=True):
        self.directory = os.path.join(output_dir, "logs")
        self.writer = tf.summary.create_file_writer(self.directory) if chief else None

    def write_epoch(self, row, model, validation):
        """Logs one finished epoch's history row; with an image every few epochs from `validation` batches."""
        if self.writer is None:
            return
        step = int(row["epoch"]) + 1
        with self.writer.as_default(step=step):
            for name in SCALARS:
                tf.summary.write(name, tf.constant(float(row[name]), tf.float32), metadata=plugin("scalars"))
            if step == 1 or step % constants.TENSORBOARD_IMAGE_EVERY == 0:
                tf.summary.write("validation: input | model | original", png_images(comparison(model, validation)),
                                 metadata=plugin("images"))
        self.writer.flush()


def plugin(name):
    """Summary metadata naming the TensorBoard plugin that shows a value (scalars or images)."""
    return tf.compat.v1.SummaryMetadata(plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name=name))


def png_images(images):
    """The images plugin's tensor: [width, height, PNG bytes of each image] as strings."""
    height, width = images.shape[1], images.shape[2]
    pngs = [tf.image.encode_png(tf.cast(tf.round(image * 255.0), tf.uint8)) for image in images]
    return tf.stack([tf.constant(str(width)), tf.constant(str(height)), *pngs])


def comparison(model, validation):
    """(N, H, 3W, 1) images of the first validation batch: the input upscaled, the model's output, the target."""
    low_res, target = next(iter(validation))
    low_res, target = low_res[:constants.TENSORBOARD_IMAGES], target[:constants.TENSORBOARD_IMAGES]
    output = tf.clip_by_value(tf.cast(model(low_res, training=False), tf.float32), 0.0, 1.0)
    upscaled = tf.image.resize(low_res, tf.shape(target)[1:3], method="nearest")
    return tf.concat([upscaled, output, target], axis=2)
