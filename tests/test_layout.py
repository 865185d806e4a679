"""The package's layout rules, read from the source with ``ast``:

* no private name (``_name``, not a dunder) defined in one module is imported or used by
  another — what two modules share is public in the module that owns it; private *modules*
  (``dmdjax/dmd/_solve.py``) are imported only from inside the package;
* no import cycle between the modules of ``dmdjax`` (imports inside functions included).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dmdjax"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(path: Path):
    """(node, target module, imported names) for every import in ``path``; relative imports
    resolved against its module."""
    module = _module_name(path) if path.is_relative_to(PACKAGE) else ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, None, alias.asname or alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield node, target, alias.name, alias.asname or alias.name


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _private_uses(path: Path):
    """Messages for each private name of another dmdjax module that ``path`` imports or uses."""
    own = _module_name(path) if path.is_relative_to(PACKAGE) else None
    inside = own is not None
    bound = {}  # local name -> dmdjax module it stands for
    problems = []
    for node, target, name, local in _imports(path):
        if not target.startswith("dmdjax"):
            continue
        if name is None:  # import dmdjax.x [as y]
            bound[local] = target if local != target.split(".")[0] else "dmdjax"
            if any(_is_private(part) for part in target.split(".")) and not inside:
                problems.append(f"{_where(path)}:{node.lineno} imports private module {target}")
            continue
        candidate = f"{target}.{name}"
        if candidate in MODULES:
            bound[local] = candidate
            if _is_private(name) and not inside:
                problems.append(f"{_where(path)}:{node.lineno} imports private module {candidate}")
        elif _is_private(name) and target != own:
            problems.append(f"{_where(path)}:{node.lineno} imports private name {name} from {target}")
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if not (isinstance(value, ast.Name) and value.id in bound):
            continue
        module = bound[value.id]
        for attr in chain:
            if f"{module}.{attr}" in MODULES:
                module = f"{module}.{attr}"
                if _is_private(attr) and not inside:
                    problems.append(f"{_where(path)}:{node.lineno} uses private module {module}")
                continue
            if _is_private(attr) and module != own:
                problems.append(f"{_where(path)}:{node.lineno} uses private name {attr} of {module}")
            break
    return problems


SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


def test_no_private_name_crosses_a_module_boundary():
    problems = [message for path in SOURCES for message in _private_uses(path)]
    assert not problems, "\n".join(problems)


def _graph():
    edges = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for _, target, imported, _ in _imports(path):
            if not target.startswith("dmdjax"):
                continue
            candidate = f"{target}.{imported}" if imported else target
            destination = candidate if candidate in MODULES else target
            if destination in MODULES and destination != name:
                edges[name].add(destination)
    return edges


def _cycles(edges):
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_can_fail(tmp_path):
    """The rules catch what they are for: a private import, a private attribute and a cycle."""
    fake = tmp_path / "dmdjax_fake.py"
    fake.write_text("from dmdjax.relax import _objective\nimport dmdjax.relax as r\nr._mask_pinned\n")
    assert len(_private_uses(fake)) == 2
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["dmdjax.dmd._solve", "dmdjax.state", "dmdjax.kinetics"])
def test_the_graph_sees_the_package(module):
    assert module in MODULES and _graph()[module], module
