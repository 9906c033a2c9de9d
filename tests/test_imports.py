"""Importing csr_index: module imports run one way (no cycles, not even through function-level
imports), the package imports where fcntl does not exist, and it leaves numba's settings alone
until it first starts numba's thread pool."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import csr_index.threads
from csr_index.codes import SparseCodes
from csr_index.engines import QueryBatch, make_engine
from csr_index.rerank import rerank_topn
from csr_index.sparsify import encode_rows, support_rows

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"csr_index": ROOT / "csr_index", "csr_index.cli": ROOT / "cli",
           "csr_index.integrations": ROOT / "integrations"}  # pyproject's package-dir mapping



def package_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for file in folder.rglob("*.py"):
            parts = file.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
            modules.setdefault(name, file)  # csr_index/ has no cli/ or integrations/ of its own
    return modules


def imported_modules(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports at run time, at module level or inside functions
    (imports under ``if TYPE_CHECKING:`` never run), with the packages whose ``__init__`` that
    runs (those above ``name`` itself are already imported)."""
    tree = ast.parse(file.read_text())
    type_only = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(branch.test) for stmt in branch.body for node in ast.walk(stmt)}
    here = name if file.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*package, *([node.module] if node.module else [])])
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    out = set()
    for target in targets:
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            module = ".".join(parts[:i])
            explicit = i == len(parts)  # `from . import x` of a name (not a submodule) imports the package
            if module in modules and module != name and (explicit or not name.startswith(module + ".")):
                out.add(module)
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_module_imports_run_one_way():
    modules = package_modules()
    graph = {name: imported_modules(name, file, modules) for name, file in modules.items()}
    assert "csr_index.storage" in graph["csr_index.encoder"]  # the parser sees the package's own imports
    assert import_cycles(graph) == [], "an import cycle (a lazy import inside a function counts too)"


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import g\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n")
    modules = {f"p.{n}": tmp_path / f"{n}.py" for n in "abc"}
    graph = {name: imported_modules(name, file, modules) for name, file in modules.items()}
    assert import_cycles(graph) == [{"p.a", "p.b"}] and graph["p.c"] == set()


def run_python(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_package_imports_without_fcntl():
    """fcntl is POSIX-only (no Windows): the writer lock imports it when it takes the lock."""
    out = run_python("import sys; sys.modules['fcntl'] = None\n"
                     "import csr_index, csr_index.storage, csr_index.cli.main; print('imported')")
    assert out.strip() == "imported"


def test_numbas_threading_layer_is_set_when_csr_index_starts_its_pool_not_on_import():
    out = run_python("import numba, csr_index\n"
                     "from csr_index.engines import make_engine\n"  # everything a search imports
                     "print(numba.config.THREADING_LAYER)\n"
                     "from csr_index.threads import num_threads\n"
                     "num_threads()\n"
                     "print(numba.config.THREADING_LAYER, numba.threading_layer())")
    on_import, started = out.splitlines()
    assert on_import == "default"  # importing changed nothing for other numba code
    layer, running = started.split()
    assert layer == "threadsafe" and running in ("tbb", "omp")


def test_a_threading_layer_chosen_by_the_user_is_kept():
    out = run_python("import csr_index, numba\nfrom csr_index.threads import num_threads\nnum_threads()\n"
                     "print(numba.threading_layer())", NUMBA_THREADING_LAYER="workqueue")
    assert out.strip() == "workqueue"


def test_a_pool_already_running_on_workqueue_is_reported(monkeypatch, caplog):
    monkeypatch.setattr(csr_index.threads, "_done", False)
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")  # started by other code first
    with caplog.at_level(logging.WARNING, logger="csr_index"):
        csr_index.threads.use_threadsafe_layer()
    assert "'workqueue' layer before csr-index used it" in caplog.text


def _search(name: str, dense: bool) -> None:
    rng = np.random.default_rng(0)
    docs = SparseCodes(rng.integers(0, 16, (64, 4)).astype(np.uint16), rng.random((64, 4), np.float32), 16)
    terms = SparseCodes(docs.indices[:3], docs.values[:3], 16)
    batch = QueryBatch(terms, dense=rng.random((3, 16), np.float32), offset=np.zeros(3, np.float32)) if dense \
        else QueryBatch(terms)
    make_engine(name, docs, threads=2).search(batch, 5, np.ones(64, np.float32), np.zeros(64, np.uint8))


PARALLEL_LAUNCHES = {
    "inverted engine, sparse queries": lambda: _search("inverted", dense=False),
    "inverted engine, dense queries": lambda: _search("inverted", dense=True),
    "pruned engine": lambda: _search("pruned", dense=False),
    "encoding": lambda: encode_rows(np.random.default_rng(0).random((600, 16), np.float32), 4, np.eye(16, dtype=np.float32),
                                    np.zeros(16, np.float32), np.zeros(16, np.float32), 0.0, refit=True),
    "query supports": lambda: support_rows(np.random.default_rng(0).random((600, 16), np.float32),
                                           np.zeros(16, np.float32), 4),
    "re-rank": lambda: rerank_topn(np.ones((3, 8), np.float32), np.zeros((3, 4), np.int64), np.ones((64, 8), np.float16),
                                   2, threads=2),
}


@pytest.mark.parametrize("launch", list(PARALLEL_LAUNCHES))
def test_every_parallel_kernel_launch_chooses_the_layer_first(launch, monkeypatch):
    """As in a fresh process (no layer chosen, numba's pool not started), each csr-index path that
    launches a parallel kernel first sets the thread-safe layer."""
    def not_started():
        raise ValueError("Threading layer is not initialized.")

    monkeypatch.setattr(csr_index.threads, "_done", False)
    monkeypatch.setattr(numba.config, "THREADING_LAYER", "default")
    monkeypatch.setattr(numba, "threading_layer", not_started)
    PARALLEL_LAUNCHES[launch]()
    assert numba.config.THREADING_LAYER == "threadsafe"
