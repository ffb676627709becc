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
                      "recovery", "ground_truth", "planted_units", "render_images", "download_tiny_imagenet",
                      "browser"]  # pages and links: rule sprites cuts the images


HEAVY = ("torch", "open_clip", "torchvision", "timm")
# One interpreter imports what every job imports anyway (numpy, pandas, pyarrow, scipy, scikit-learn; none of
# them imports torch: checked), then forks a child per script that imports the script's modules: the same
# check as a fresh interpreter per script, without paying those imports once per script.
_FORK_CHECK = """
import ast, importlib, json, os, sys
import numpy, pandas, pyarrow.parquet, scipy.stats, sklearn.metrics
heavy, scripts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert not [m for m in heavy if m in sys.modules], "a shared import loads a heavy module"
out = {}
for name, path in scripts.items():
    mods = [n.module for n in ast.parse(open(path).read()).body if isinstance(n, ast.ImportFrom)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            for m in mods:
                importlib.import_module(m)
            os.write(w, json.dumps([mods, sorted(m for m in heavy if m in sys.modules)]).encode())
        except BaseException as e:
            os.write(w, json.dumps([mods, f"importing them failed: {e!r}"]).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    out[name] = json.loads(text)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def table_only_imports():
    """{script: [its `from polypsi... import` modules, the heavy modules importing them loads]}."""
    import json

    scripts = {s: str(ROOT.parents[1] / "workflow" / "scripts" / f"{s}.py") for s in TABLE_ONLY_SCRIPTS}
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    out = subprocess.run([sys.executable, "-c", _FORK_CHECK, json.dumps(HEAVY), json.dumps(scripts)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("script", TABLE_ONLY_SCRIPTS)
def test_table_only_jobs_import_no_torch(script, table_only_imports):
    mods, heavy = table_only_imports[script]
    assert mods and all(m.startswith("polypsi") for m in mods), mods
    assert heavy == [], f"{script}: {heavy} imported by {mods}"


def test_the_import_check_sees_what_a_script_imports():
    """The check itself, with a module merge_topk's job does import standing in for torch: the child reports it."""
    import json

    scripts = {"merge_topk": str(ROOT.parents[1] / "workflow" / "scripts" / "merge_topk.py")}
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    out = subprocess.run([sys.executable, "-c", _FORK_CHECK, json.dumps(["polypsi.io", "torch"]), json.dumps(scripts)],
                         capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout)["merge_topk"][1] == ["polypsi.io"]
