"""The project's import graph by layer: which module uses which (docs/layout.md shows its output).

usage: python tools/import_graph.py   (in the repository root)

Every `import` anywhere in each module of the root and of the packages (common/, scans/, through_plane/,
training/) is read with ast.  The layers, lowest first, are LAYERS below; a module may import modules of
its own layer or lower ones, never higher (tests/test_layout.py checks it, and that there is no cycle).
"""
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("common", "scans", "through_plane", "training")
# Lowest first.  The seed's library at the root (constants, dataset, modules, inference) sits between the
# shared helpers and the packages that build on it; the scripts and evaluation use everything.
LAYERS = (("constants",), ("common",), ("dataset", "modules", "inference"), ("scans", "through_plane", "training"),
          ("evaluation", "train", "predict", "benchmark"))


def module_names():
    """{dotted module name: its file} for the root's and the packages' .py files (no __init__)."""
    found = {path.stem: path for path in ROOT.glob("*.py")}
    for package in PACKAGES:
        found.update({f"{package}.{path.stem}": path for path in (ROOT / package).glob("*.py")
                      if path.stem != "__init__"})
    return found


def project_imports():
    """{module: sorted project modules it imports} (dotted names)."""
    modules = module_names()
    found = {}
    for module, path in modules.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        found[module] = sorted((names & set(modules)) - {module})
    return found


def layer_of(module):
    """The index in LAYERS of a module's layer (by its package, or its own name at the root)."""
    key = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if key in layer)


def main():
    imports = project_imports()
    print("layer module                          project modules it imports")
    for module in sorted(imports, key=lambda m: (layer_of(m), m)):
        print(str(layer_of(module)).ljust(6) + module.ljust(32) + (" ".join(imports[module]) or "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
