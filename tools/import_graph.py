"""The README's "Which module uses which": each top-level module's project imports, by level.

usage: python tools/import_graph.py   (in the repository root; prints the table the README shows)

Every `import` anywhere in each top-level .py file is read with ast; a module's level is one more than the
highest level among the project modules it imports (0: none).
"""
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def project_imports():
    """{module: sorted project modules it imports} for every top-level .py file."""
    modules = {path.stem for path in ROOT.glob("*.py")}
    found = {}
    for module in modules:
        nodes = list(ast.walk(ast.parse((ROOT / f"{module}.py").read_text())))
        names = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module.split(".")[0] for node in nodes
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        found[module] = sorted(names & (modules - {module}))
    return found


def main():
    imports = project_imports()

    def level(module):
        return 1 + max(map(level, imports[module]), default=-1)

    print("level module           project modules it imports")
    for module in sorted(imports, key=lambda m: (level(m), m)):
        print(str(level(module)).ljust(6) + module.ljust(17) + (" ".join(imports[module]) or "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
