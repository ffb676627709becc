"""The package's import graph: no cycles, the core never imports the planted world, lazy imports say why."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polypsi.codehash import PACKAGE, ROOT, imports_of, module_file

CORE_MUST_NOT_IMPORT = "polypsi.world"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = p
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    # an edge to a.b.c is an edge to the module that runs; parent packages run first but do not import back
    return {name: {m for m in imports_of(path, name) if m != name} for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_core_modules_do_not_import_the_planted_world():
    offenders = {m: sorted(d for d in deps if d == CORE_MUST_NOT_IMPORT or d.startswith(CORE_MUST_NOT_IMPORT + "."))
                 for m, deps in _graph().items() if not m.startswith(CORE_MUST_NOT_IMPORT)}
    assert {m: d for m, d in offenders.items() if d} == {}


def _local_imports(path: Path):
    """(line, text) of imports inside a function body."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node.lineno, lines[node.lineno - 1]


def test_function_local_imports_say_why():
    missing = [f"{p.relative_to(ROOT.parent)}:{ln}: {text.strip()}"
               for p in _modules().values() for ln, text in _local_imports(p) if "# lazy:" not in text]
    assert not missing, "a function-local import needs a `# lazy: <reason>` comment:\n" + "\n".join(missing)


def test_module_file_resolves_packages_and_modules():
    assert module_file(PACKAGE).name == "__init__.py"
    assert module_file("polypsi.stats.score").name == "score.py"
    assert module_file("numpy") is None


# Workflow scripts whose stage reads and writes tables only: their jobs must start without torch or open_clip
# (2-8 s of start-up each). Heavy imports are function-local (`# lazy:`) where a module serves both kinds of job.
TABLE_ONLY_SCRIPTS = ["merge_topk", "seed_split", "k_sensitivity", "interventions_summary", "or_units", "index_dataset",
                      "recovery", "ground_truth", "planted_units", "render_images", "download_tiny_imagenet"]


@pytest.mark.parametrize("script", TABLE_ONLY_SCRIPTS)
def test_table_only_jobs_import_no_torch(script):
    path = ROOT.parents[1] / "workflow" / "scripts" / f"{script}.py"
    mods = [n.module for n in ast.parse(path.read_text()).body if isinstance(n, ast.ImportFrom)]
    assert mods and all(m.startswith("polypsi") for m in mods), mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted(x for x in ('torch', 'open_clip', 'torchvision', 'timm') if x in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", f"{script}: {out.stdout.strip()} imported by {mods}"
