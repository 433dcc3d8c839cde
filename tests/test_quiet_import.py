"""Library use is as quiet as the CLI: importing deepkit's Keras packages
under JAX writes nothing to stderr and does not import TensorFlow, and
TensorFlow imported after deepkit leaves out its C++ INFO/WARNING start-up
lines unless the user asked for them."""

import os
import subprocess
import sys


PACKAGES = ("layers", "models", "callbacks", "training", "metrics")


def _run(code, backend, **env):
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ.update(env, KERAS_BACKEND=backend)
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_import_under_jax_writes_nothing_and_leaves_tensorflow_out():
    imports = "; ".join(f"import deepkit.{name}" for name in PACKAGES)
    result = _run(f"import sys; {imports}; print('tensorflow' in sys.modules)", "jax")
    assert result.stderr == ""
    assert result.stdout.strip() == "False"


def _tensorflow_honours_its_log_level():
    """Whether this TensorFlow build hides its C++ INFO lines under
    TF_CPP_MIN_LOG_LEVEL=2. Some builds (TF 2.21.0 as pip installed it on
    2026-12-07) log through absl before absl is initialized and print them
    whatever the variable says; no setting of deepkit's can hide those."""
    result = _run("import tensorflow", "jax", TF_CPP_MIN_LOG_LEVEL="2")
    return "oneDNN" not in result.stderr and "cpu_feature_guard" not in result.stderr


def test_tensorflow_imported_after_deepkit_hides_its_info_and_warning_lines():
    # Under JAX, TensorFlow arrives later (model.save, a tf.data pipeline).
    code = "import os, deepkit, tensorflow; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    result = _run(code, "jax")
    # deepkit sets the level before TensorFlow is imported ...
    assert result.stdout.strip() == "2"
    # ... which hides the start-up lines wherever TensorFlow reads it.
    if _tensorflow_honours_its_log_level():
        for chatter in ("cpu_feature_guard", "oneDNN"):
            assert chatter not in result.stderr, result.stderr


def test_a_users_own_log_level_is_kept():
    code = "import os, deepkit.layers; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    result = _run(code, os.environ.get("KERAS_BACKEND", "tensorflow"), TF_CPP_MIN_LOG_LEVEL="0")
    assert result.stdout.strip() == "0"
