"""Command-line pieces shared by train.py, predict.py and benchmark.py."""
import argparse
import contextlib
import os
import sys
import tempfile


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def write_atomically(path, write):
    """Calls write(tmp_path), then renames tmp_path to path: `path` is never half-written.

    The temporary file sits beside the target (same filesystem, so the rename
    is atomic) and keeps its suffix, which savers such as Keras and nibabel
    read to pick the format.  It is removed if writing fails.
    """
    folder, name = os.path.split(path)
    tmp_path = os.path.join(folder, f".partial-{name}")
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def check_output_dir(output_dir):
    """Creates the output dir; ValueError naming it if it cannot be written."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(f"--output-dir {output_dir}: cannot write there ({error.strerror or error})") from None


@contextlib.contextmanager
def quiet_native_stderr():
    """Hides what native code writes to stderr inside the block, unless the block fails.

    TensorFlow's C++ side prints notices such as "Could not find cuda drivers"
    and "failed call to cuInit" on machines without CUDA, whatever
    TF_CPP_MIN_LOG_LEVEL says; they would bury our one-line messages.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as chatter:
        os.dup2(chatter.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            chatter.seek(0)
            sys.stderr.write(chatter.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def set_tensorflow_environment():
    """TensorFlow's settings for this project; they must be set before TensorFlow is imported.

    Native INFO/WARNING logs off, and TensorFlow's oneDNN kernels on, which TF
    enables by itself only on CPUs with AVX-512 VNNI/BF16 or AMX: without them,
    convolutions run as thousands of small Eigen matrix products.  On a 2-core
    AVX2 EPYC that is about +20% training and +10% inference throughput
    (benchmark.py).  Either set in the environment beforehand wins.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def import_tensorflow_quietly():
    """Imports TensorFlow (and looks for GPUs) set up by set_tensorflow_environment, its start-up chatter hidden."""
    set_tensorflow_environment()
    with quiet_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


def target_size(text):
    value = positive_int(text)
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 from 16 up, got {value}")
    return value
