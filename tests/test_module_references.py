"""Every `module.name` the project's code reads from one of its own modules exists there, and every
`from module import name` too (one in a function body runs only when it is called).

The e2e suite runs only on a real cluster, so a helper removed from `e2e/cluster` while a fixture
still calls it fails nowhere else: c3d387a mended exactly that (`image_import.importing`, gone
from the module, still called by e2e/conftest.py, failed every cluster test at set-up). This reads
the source instead of running it: each name an `import` binds to a project module, per scope (a
parameter or assignment of the same name shadows it), and each attribute loaded through it.
"""
import ast
import importlib
import importlib.util
import pathlib
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "e2e", "tests", "zt_operator")
SOURCES = ("relay", "e2e", "tests", "operator/zt_operator")
NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _own(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


class _Scope:
    """One pass over a scope's own nodes (not those of the scopes nested in it)."""

    def __init__(self, scope: ast.AST):
        self.imports, self.other_bindings, self.reads, self.nested = {}, set(), [], []
        self.missing_imports: list[str] = []
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = scope.args
            self.other_bindings |= {arg.arg for arg in args.posonlyargs + args.args + args.kwonlyargs}
            self.other_bindings |= {arg.arg for arg in (args.vararg, args.kwarg) if arg}
        stack = list(ast.iter_child_nodes(scope))
        while stack:
            node = stack.pop()
            if isinstance(node, NESTED):
                self.nested.append(node)
                if not isinstance(node, ast.Lambda):
                    self.other_bindings.add(node.name)
                continue
            self._note(node)
            stack.extend(ast.iter_child_nodes(node))

    def _note(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            self.imports.update({alias.asname: alias.name for alias in node.names if alias.asname and _own(alias.name)})
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _own(node.module):
            parent = importlib.import_module(node.module)
            for alias in node.names:
                if isinstance(getattr(parent, alias.name, None), types.ModuleType):
                    self.imports[alias.asname or alias.name] = getattr(parent, alias.name).__name__
                elif not hasattr(parent, alias.name) and alias.name != "*" and (
                        not hasattr(parent, "__path__") or importlib.util.find_spec(f"{node.module}.{alias.name}") is None):
                    # (a submodule not imported yet is no attribute of its package, but exists)
                    self.missing_imports.append(f"{node.lineno}: from {node.module} import {alias.name} "
                                                f"({node.module} has no {alias.name})")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            self.other_bindings.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            self.other_bindings.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name):
            self.reads.append(node)


def missing_references(tree: ast.AST, where: str, outer: dict[str, str] | None = None) -> list[str]:
    """`where:line: module.name` for each attribute read through a project module that lacks it."""
    scope = _Scope(tree)
    bound = {name: module for name, module in (outer or {}).items() if name not in scope.other_bindings}
    bound.update(scope.imports)
    missing = [f"{where}:{node.lineno}: {node.value.id}.{node.attr} ({bound[node.value.id]} has no {node.attr})"
               for node in scope.reads
               if node.value.id in bound and not hasattr(importlib.import_module(bound[node.value.id]), node.attr)]
    missing += [f"{where}:{line}" for line in scope.missing_imports]
    for nested in scope.nested:
        missing += missing_references(nested, where, bound)
    return sorted(missing)


def test_every_attribute_read_from_a_project_module_exists():
    files = sorted(path for source in SOURCES for path in (ROOT / source).rglob("*.py"))
    assert len(files) > 100  # the walk found the tree
    missing = [line for path in files
               for line in missing_references(ast.parse(path.read_text()), str(path.relative_to(ROOT)))]
    assert missing == []


def test_a_removed_helper_is_found_and_a_shadowing_name_is_not():
    source = (
        "from e2e.cluster import image_import\n"
        "def fixture():\n"
        "    with image_import.no_such_helper():\n"  # what c3d387a mended
        "        pass\n"
        "def shadowed(image_import):\n"
        "    return image_import.anything\n"       # a parameter, not the module
    )
    assert missing_references(ast.parse(source), "example.py") == [
        "example.py:3: image_import.no_such_helper (e2e.cluster.image_import has no no_such_helper)"]


def test_a_name_imported_from_a_project_module_inside_a_function_is_checked_too():
    # `from module import name` in a fixture body runs only on a cluster, like an attribute read.
    source = (
        "def fixture():\n"
        "    from e2e.cluster.image_import import no_such_helper\n"
        "    from e2e.cluster import no_such_module\n"
        "    from e2e.cluster.image_import import importing, ensure_docker_image as ensure\n"
        "    from e2e.cluster import image_import\n"
    )
    assert missing_references(ast.parse(source), "example.py") == [
        "example.py:2: from e2e.cluster.image_import import no_such_helper (e2e.cluster.image_import has no no_such_helper)",
        "example.py:3: from e2e.cluster import no_such_module (e2e.cluster has no no_such_module)",
    ]
