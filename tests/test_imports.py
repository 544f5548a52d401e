"""No import circles between the project's modules (vsr/, engines/ as vsr.engines, kernels/ as
vsr.kernels): every ``import`` and ``from ... import`` is read from the source with ``ast``,
including the ones inside functions (a lazy import still ties two modules together), and the
module graph must have no cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from helpers import package_folders

REPO = Path(__file__).resolve().parents[1]


def project_modules(roots: dict[str, Path] | None = None) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file under the roots (default: the
    folders pyproject maps: vsr/, engines/ as vsr.engines, kernels/ as vsr.kernels).

    A package's ``__init__.py`` is the module named for the package.
    """
    modules: dict[str, Path] = {}
    for package, folder in (roots or package_folders()).items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a (possibly relative) ``from`` target seen in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start from its package
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([target] if target else [])])


def imported_modules(module: str, path: Path, known: set[str] | dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(project module, line) for every import in ``module``'s file, at any depth (functions too).

    ``from pkg import name`` is an import of the submodule ``pkg.name`` when that is a module, else
    of ``pkg``; ``import a.b.c`` is an import of ``a.b.c``. Importing a submodule also runs its
    package's ``__init__``, but that edge is left out: every package that re-exports from its
    submodules would otherwise be a "cycle" with them.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != module:
                yield target, node.lineno


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in imported_modules(module, path, modules):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
    return sorted(found)


def describe(component: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path = REPO) -> str:
    """The imports that tie a cycle's modules together, as ``path:line a -> b`` lines."""
    members = set(component)
    lines = []
    for a in component:
        for b, line in sorted(graph[a].items()):
            if b in members:
                lines.append(f"  {modules[a].relative_to(root)}:{line}  {a} -> {b}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the checks


def test_the_project_has_no_import_cycles():
    modules = project_modules()
    assert "vsr.cli" in modules and "vsr.engines.trt_runtime" in modules and "vsr.kernels.yuv" in modules
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "import cycles (break them with a shared lower module):\n" + "\n\n".join(
        describe(c, graph, modules) for c in found
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_cycles_through_function_level_and_relative_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import thing\n",
        "pkg/a.py": "from .b import other\nthing = 1\n",
        "pkg/b.py": "def f():\n    from pkg import a\n    return a\nother = 2\n",
        "pkg/c.py": "import pkg.sub.d\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "from ..c import x\n",  # c <-> sub.d through an absolute and a relative import
        "pkg/e.py": "from . import a\n",  # one way only: no cycle
        "ext/__init__.py": "",
        "ext/f.py": "from ..e import y\n",  # a mapped root: ext/ is pkg.ext
    })
    modules = project_modules({"pkg": tmp_path / "pkg", "pkg.ext": tmp_path / "ext"})
    graph = import_graph(modules)
    assert graph["pkg.e"] == {"pkg.a": 1}  # `from . import a` is the submodule, not the package
    assert graph["pkg.ext.f"] == {"pkg.e": 1}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]
    text = describe(["pkg.a", "pkg.b"], graph, modules, tmp_path)
    assert "pkg.b -> pkg.a" in text and "pkg/b.py:2" in text


def test_a_package_init_reexporting_its_submodules_is_not_a_cycle(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "from .a import thing\n", "pkg/a.py": "from pkg.b import x\nthing = 1\n", "pkg/b.py": "x = 1\n"})
    graph = import_graph(project_modules({"pkg": tmp_path / "pkg"}))
    assert cycles(graph) == []
    assert graph["pkg"] == {"pkg.a": 1} and graph["pkg.a"] == {"pkg.b": 1}


# --------------------------------------------------------------------------- layering rules

#: module (or package prefix) -> project modules it must not import (directly, at any depth of
#: the file). Each rule says why.
FORBIDDEN = {
    # Safe writes are the bottom of the tree: everything that writes a file uses them.
    "vsr.files": ("vsr.",),
    # Batch works on files and runs; engine internals are not its business. vsr run's checkpoints
    # (vsr.resume) sit on top of batch's segments, never the other way round.
    "vsr.batch": ("vsr.engines.cache", "vsr.resume"),
    # The one-pass run knows nothing of checkpoints or segments: both build on it.
    "vsr.pipeline": ("vsr.resume", "vsr.batch"),
    # The threads-and-channels skeleton of a run knows nothing of media or models.
    "vsr.stages": ("vsr.",),
    # The compute stage and the colour conversion serve vsr run and vsr batch alike: they never
    # reach up into either.
    "vsr.video_compute": ("vsr.pipeline", "vsr.batch", "vsr.cli"),
    "vsr.planes": ("vsr.pipeline", "vsr.batch", "vsr.cli", "vsr.upscale"),
    # Training and evaluation decode video frames through vsr.planes, not the run's pipeline.
    "vsr.train": ("vsr.pipeline", "vsr.batch"),
    # Loading and running a plan needs only the TensorRT runtime, never the builder (the ONNX reader,
    # build options, the timing cache); building loads through the runtime, not the other way round.
    "vsr.engines.trt_runtime": ("vsr.engines.trt_build",),
    # What build and runtime share sits under both.
    "vsr.engines.trt_common": ("vsr.engines.trt_build", "vsr.engines.trt_runtime"),
    # Training sits on top: the CLI starts it, nothing in the core reaches up into it (the
    # training config lives in vsr.train.config, not beside the core modules).
    "vsr": ("vsr.train",),
    # Tile geometry and the whole-frames-or-tiles plan are pure arithmetic: the Upscaler and the
    # TensorRT engines import them, they import nothing of vsr.
    "vsr.tiling": ("vsr.",),
    # Trimming sits below decoding: the decoder and the batch segment joiner both use its Cut.
    "vsr.media.trim": ("vsr.media.decode", "vsr.media.dali_decode", "vsr.pipeline", "vsr.batch"),
    # The value types (Frame, VideoInfo, CopiedPacket) sit below the media code that makes them.
    "vsr.frame": ("vsr.media.decode", "vsr.media.trim", "vsr.media.encode", "vsr.pipeline"),
}
#: Exceptions to FORBIDDEN: what the module may import after all.
ALLOWED = {"vsr.files": ("vsr.errors",)}
#: Modules (and packages) inside a FORBIDDEN scope that its rule does not cover.
EXEMPT = {"vsr": ("vsr.train", "vsr.cli")}


def _within(module: str, scope: str) -> bool:
    return module == scope or module.startswith(scope + ".")


def broken_rules(graph: dict[str, dict[str, int]]) -> list[str]:
    """``module -> target (line)`` for every import a rule forbids."""
    found = []
    for module, edges in sorted(graph.items()):
        for scope, banned in FORBIDDEN.items():
            if not _within(module, scope) or any(_within(module, e) for e in EXEMPT.get(scope, ())):
                continue
            for target, line in sorted(edges.items()):
                if any(target == b or target.startswith(b) for b in banned) and target not in ALLOWED.get(scope, ()):
                    found.append(f"{module} -> {target} (line {line})")
    return found


#: module -> the only project modules that may import it. Each rule says why.
OWNERS = {
    # One owner per decision: vsr.compute turns --backend auto into a choice and refuses what a
    # backend cannot do; nobody else picks a backend or builds an engine from the flags.
    "vsr.engines.backends": ("vsr.compute",),
}


def foreign_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """``module -> target (line)`` for every import of an :data:`OWNERS` module by a non-owner."""
    return [
        f"{module} -> {target} (line {line})"
        for module, edges in sorted(graph.items())
        for target, line in sorted(edges.items())
        if target in OWNERS and module not in OWNERS[target]
    ]


def test_the_layering_rules_hold():
    graph = import_graph(project_modules())
    assert broken_rules(graph) == []
    assert foreign_imports(graph) == []


def test_the_owner_check_finds_a_foreign_import():
    graph = {"vsr.compute": {"vsr.engines.backends": 3}, "vsr.cli": {"vsr.engines.backends": 9, "vsr.compute": 2}}
    assert foreign_imports(graph) == ["vsr.cli -> vsr.engines.backends (line 9)"]


def test_the_layering_check_finds_a_broken_rule():
    graph = {
        "vsr.files": {"vsr.errors": 1, "vsr.paths": 7}, "vsr.batch.run": {"vsr.engines.cache": 3}, "vsr.cli": {"vsr.engines.cache": 1, "vsr.train.loop": 2},
        "vsr.train.loop": {"vsr.train.config": 4}, "vsr.upscale": {"vsr.train.losses": 5}, "vsr.media.trim": {"vsr.media.decode": 6},
    }
    assert broken_rules(graph) == [
        "vsr.batch.run -> vsr.engines.cache (line 3)", "vsr.files -> vsr.paths (line 7)",
        "vsr.media.trim -> vsr.media.decode (line 6)", "vsr.upscale -> vsr.train.losses (line 5)",
    ]
