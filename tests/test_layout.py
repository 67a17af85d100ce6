"""The architecture as the README describes it, checked on the source: one import name, no
import cycles (function-level imports included), and a Beam-free core under transforms/.

The folders map to import names as setup.py's `package_dir` says: pixelbeam/ -> `pixelbeam`,
pipeline/ -> `pixelbeam.pipeline`, transforms/ -> `pixelbeam.transforms`.
"""

import ast
import collections
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"pixelbeam": "pixelbeam", "pipeline": "pixelbeam.pipeline", "transforms": "pixelbeam.transforms"}
# The pure core: no PTransform, no DoFn; Beam only for its filesystems (local and gs:// alike).
CORE = ("pixelbeam.transforms.planning", "pixelbeam.transforms.pixels", "pixelbeam.transforms.fetching",
        "pixelbeam.transforms.sources", "pixelbeam.transforms.formats", "pixelbeam.transforms.loaders",
        "pixelbeam.transforms.tables",
        "pixelbeam.transforms.patch", "pixelbeam.transforms.outcomes", "pixelbeam.transforms.storage",
        "pixelbeam.transforms.secrets")
BEAM_IO = ("apache_beam.io.filesystems", "apache_beam.io.filesystem")


def modules() -> dict[str, str]:
    """{import name: file} of every module of the three folders."""
    out = {}
    for folder, name in FOLDERS.items():
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, os.path.join(ROOT, folder))[:-3].replace(os.sep, ".")
            out[f"{name}.{rel}".removesuffix(".__init__")] = path
    return out


def imports(path: str, top_level_only: bool = False) -> set[str]:
    """Absolute module names imported by a file (`from a.b import c` gives a.b and a.b.c)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t in imports(p, top_level_only) if t in mods and t != m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_even_through_function_level_imports():
    assert cycles(import_graph()) == []


def test_only_the_pixelbeam_name_is_imported():
    """No module, test, benchmark or doc example imports the folders by their old top-level names."""
    offenders = []
    files = [p for d in ("pixelbeam", "pipeline", "transforms", "tests", "benchmarks")
             for p in glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True)]
    for path in files:
        for name in imports(path):
            if name.split(".")[0] in ("pipeline", "transforms"):
                offenders.append((os.path.relpath(path, ROOT), name))
    for doc in glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "README.md")]:
        for number, line in enumerate(open(doc, encoding="utf-8"), 1):
            words = line.split()
            if line.lstrip().startswith(("from ", "import ")) and words[1].split(".")[0] in ("pipeline", "transforms"):
                offenders.append((f"{os.path.relpath(doc, ROOT)}:{number}", line.strip()))
    assert offenders == []


def test_the_core_is_beam_free():
    """The core's module-level imports, followed through pixelbeam's own modules, reach no Beam
    code but its filesystems, and no PTransform module."""
    graph, mods = import_graph(top_level_only=True), modules()
    core = [m for m in mods if m.startswith(CORE)]
    assert len(core) > 20
    problems = []
    for start in core:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            if not m.startswith(CORE) and m.startswith("pixelbeam.transforms."):
                problems.append((start, m))
            beam = {t for t in imports(mods[m], top_level_only=True) if t.split(".")[0] == "apache_beam"}
            problems += [(start, t) for t in beam if not t.startswith(BEAM_IO)]
            todo += graph[m]
    assert problems == []


def test_modules_stay_a_few_hundred_lines():
    long = {os.path.relpath(p, ROOT): n for p in modules().values()
            if (n := sum(1 for _ in open(p, encoding="utf-8"))) > 600}
    assert long == {}, "split these by concern"


def test_every_folder_of_the_core_is_a_package_with_a_docstring():
    """Each room says what it holds in its __init__'s docstring."""
    rooms = collections.Counter()
    for name, path in modules().items():
        if path.endswith("__init__.py") and name.count(".") >= 2:
            rooms[name] += 1
            assert ast.get_docstring(ast.parse(open(path, encoding="utf-8").read())), f"{name}: say what it holds"
    assert len(rooms) >= 8


def test_hypothesis_is_derandomized_for_every_test():
    """conftest.py's profile: each run tries the same examples (see its docstring)."""
    from hypothesis import settings
    assert settings.default.derandomize and settings.default.database is None and settings.default.deadline is None


def test_the_output_folder_markers_are_the_state_files():
    """pipeline/output_folder.py spells them out (plan imports no Beam); they must stay the real names."""
    from pixelbeam.pipeline.output_folder import MARKERS
    from pixelbeam.pipeline.records import RUNNING_FILE, RUNS_FOLDER
    from pixelbeam.pipeline.resume import STATE_FILE, TABLE_STATE_FILE
    assert set(MARKERS) == {STATE_FILE, TABLE_STATE_FILE, RUNNING_FILE, RUNS_FOLDER}
