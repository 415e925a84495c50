"""TensorFlow and Keras, imported once, with this project's environment.

Every project file gets TensorFlow and Keras from here
(`from common.tensorflow_env import keras, tf`), never by `import tensorflow` or
`import keras` (tests/test_layout.py checks it), because TensorFlow reads two
settings only once, when it is first imported:

- TF_ENABLE_ONEDNN_OPTS=1: oneDNN kernels on.  TensorFlow enables them by
  itself only on CPUs with AVX-512 VNNI/BF16 or AMX; without them convolutions
  run as thousands of small Eigen matrix products.  On a 2-core AVX2 EPYC that
  is about +20% training and +10% inference throughput (benchmark.py).
- TF_CPP_MIN_LOG_LEVEL=2: native INFO/WARNING logs off.

Either one set in the environment beforehand wins.  Importing this module has
exactly that side effect, on purpose: it is the one place the rule lives, so
no order of imports elsewhere can lose it.  Native start-up notices that
ignore the log level ("Could not find cuda drivers" on machines without CUDA)
are hidden too; they would bury the scripts' one-line messages.
"""
import os

from common.cli import quiet_native_stderr

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

with quiet_native_stderr():
    import tensorflow as tf  # noqa: E402
    import keras  # noqa: E402

    tf.config.list_physical_devices("GPU")  # looking for CUDA prints its notices here

__all__ = ["keras", "tf", "deterministic_ops"]


def deterministic_ops():
    """TensorFlow's kernels made deterministic (none sums in a varying order), for the rest of the process.

    Through-plane adaptation needs it for the same voxels on every run; TensorFlow offers no public way
    back, so the drivers that adapt (predict.py --through-plane, tools/adaptation_steps.py) call it once,
    at their start, where a reader sees it, rather than deep inside adaptation.
    """
    tf.config.experimental.enable_op_determinism()
