"""The code's layout rules that nothing else would catch."""
import ast
import os
import subprocess
import sys

from conftest import ROOT


def project_files():
    for folder in (ROOT, os.path.join(ROOT, "tests")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def imported_modules(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module.split(".")[0]


def test_tensorflow_and_keras_come_only_from_tensorflow_env():
    offenders = [(os.path.relpath(path, ROOT), name) for path in project_files()
                 if os.path.basename(path) != "tensorflow_env.py"
                 for name in imported_modules(path) if name in ("tensorflow", "keras")]
    assert offenders == []


def test_any_project_module_imported_first_sets_tensorflows_environment():
    for module in ("modules", "dataset", "train", "predict", "benchmark"):
        code = (f"import os, sys; sys.path.insert(0, {ROOT!r}); import {module}; "
                "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
        env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == ["1", "2"], module
