"""The code's layout rules that nothing else would catch."""
import ast
import importlib.util
import os
import subprocess
import sys

from conftest import ROOT

PACKAGES = ("common", "scans", "through_plane", "training")


def project_files():
    for folder in (ROOT, os.path.join(ROOT, "tests"), *(os.path.join(ROOT, package) for package in PACKAGES)):
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


def test_the_root_holds_the_seeds_scripts_and_at_most_ten_modules():
    names = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    assert {"constants", "dataset", "modules", "train", "predict"} <= names
    assert len(names) <= 10, sorted(names)


def test_imports_never_run_upwards_and_never_circle():
    """Each module imports only its own layer or lower ones (tools/import_graph.py's LAYERS), and no chain of
    imports comes back to where it started."""
    graph = load_import_graph()
    imports = graph.project_imports()
    upward = [(module, used) for module, uses in imports.items() for used in uses
              if graph.layer_of(used) > graph.layer_of(module)]
    assert upward == []
    state = {}

    def visit(module, path):
        if state.get(module) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path + [module]))
        if state.get(module) is None:
            state[module] = "open"
            for used in imports[module]:
                visit(used, path + [module])
            state[module] = "done"

    for module in imports:
        visit(module, [])


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for package in load_import_graph().PACKAGES:
        docstring = ast.get_docstring(ast.parse(open(os.path.join(ROOT, package, "__init__.py")).read()))
        assert docstring and "May import:" in docstring, package


def load_import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", os.path.join(ROOT, "tools", "import_graph.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_network_presets_read_the_same_in_help_and_in_docs_flags():
    """--help and docs/flags.md both state each through-plane preset from constants.NETWORK_PRESETS."""
    from common.cli import per_network
    docs = " ".join(open(os.path.join(ROOT, "docs", "flags.md")).read().split())
    result = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    help_text = " ".join(result.stdout.split())
    for preset in ("flips", "adapt_steps", "adapt_keep", "adapt_keep_wide"):
        assert per_network(preset) in docs, preset
        assert per_network(preset) in help_text, preset


def test_docs_layout_shows_todays_import_graph():
    """docs/layout.md's table is tools/import_graph.py's output for today's tree."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_graph.py")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() in open(os.path.join(ROOT, "docs", "layout.md")).read()
