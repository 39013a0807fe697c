"""The package's import graph: no cycles, models know no file formats.

A static check: every `import` statement of every module is read (also the
ones inside functions, which run later but are dependencies all the same),
and modules are grouped by sub-package (`keras_dino.models`,
`keras_dino.weights`, ...; a top-level module is its own group). The
package's `__init__`, which re-exports everything, is left out.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "keras_dino"


def _group(module):
    return ".".join(module.split(".")[:2])


def _imports(path):
    """The `keras_dino` modules (and imported names) that `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and not (node.level)
        ):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("keras_dino.")}


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph():
    """`{group: {imported group: [importing files]}}`."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _group(_module_name(path))
        if source == "keras_dino":
            continue
        for name in _imports(path):
            target = _group(name)
            if target not in (source, "keras_dino.version"):
                files = graph.setdefault(source, {}).setdefault(target, [])
                files.append(str(path.relative_to(PACKAGE.parent)))
    return graph


def _find_cycle(graph):
    """One cycle of group names, or `None`."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_the_graph_is_read():
    # A negative control for the checks below: the known edges are seen.
    graph = _graph()
    assert (
        "keras_dino/weights/builders.py"
        in (graph["keras_dino.weights"]["keras_dino.models"])
    )
    assert "keras_dino.layers" in graph["keras_dino.models"]
    assert _find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == [
        "a",
        "b",
        "c",
        "a",
    ]


def test_models_never_import_weights():
    edges = _graph().get("keras_dino.models", {})
    assert "keras_dino.weights" not in edges, (
        "keras_dino.models must know no file formats; these files import "
        f"keras_dino.weights: {edges.get('keras_dino.weights')}"
    )


def test_data_never_imports_evaluation_or_models():
    edges = _graph().get("keras_dino.data", {})
    assert not {"keras_dino.evaluation", "keras_dino.models"} & set(edges)


def test_no_import_cycle_between_sub_packages():
    graph = _graph()
    cycle = _find_cycle(graph)
    if cycle:
        where = {f"{a} -> {b}": graph[a][b] for a, b in zip(cycle, cycle[1:])}
        raise AssertionError(f"Import cycle {' -> '.join(cycle)}: {where}")
