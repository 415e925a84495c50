"""TensorFlow and Keras, imported once, with this project's environment.

Every project file gets TensorFlow and Keras from here
(`from tensorflow_env import keras, tf`), never by `import tensorflow` or
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

__all__ = ["keras", "tf"]
