"""Code versions per rule: a hash of the library modules that a rule's script really runs.

A rule passes its code version as a param, so editing a module reruns exactly the rules whose
scripts import it, directly or through other modules (found by reading the import statements,
function-local ones included, without importing anything). Sources reached through the
registry (a plug-in's model, say) are not visible as imports: the modules of the sources a
run uses are added wherever the module that loads that kind of source is.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from . import __version__

PACKAGE = "polypsi"
ROOT = Path(__file__).resolve().parent
# The module that loads each kind of source from the registry.
LOADERS = {"model": "polypsi.models", "embedder": "polypsi.embedding", "dataset": "polypsi.data",
           "vocabulary": "polypsi.prompts"}


def module_file(name: str) -> Path | None:
    """The source file of a module of the package, or None for anything else."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for p in (base / "__init__.py", base.with_suffix(".py")):
        if p.is_file():
            return p
    return None


def statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Every statement in `body` and in the blocks nested in it (functions, classes, if/try/with/for/match).

    Imports are statements and no expression holds one, so this finds every import that `ast.walk`
    finds while visiting a tenth of the nodes (tests/test_codehash.py checks both on the package).
    """
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, None) or ():
                # an except handler or a match case is not a statement but holds a block of them
                yield from statements([child] if isinstance(child, ast.stmt) else child.body)


@lru_cache(maxsize=None)
def imports_of(path: Path, name: str | None) -> frozenset[str]:
    """Package modules imported anywhere in the file at `path` (module `name`; None for a script)."""
    tree = ast.parse(path.read_text(), str(path))
    if name is None:
        package = ""
    else:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return frozenset(m for m in found if module_file(m) is not None)


def closure(roots: Iterable[str], script: Path | None = None) -> list[str]:
    """Every package module that `roots` (and `script`) import, transitively, with their parent packages."""
    todo = list(roots) + (sorted(imports_of(script, None)) if script is not None else [])
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        todo += imports_of(module_file(name), name)
    return sorted(seen)


def rule_modules(script: Path, sources_used: dict[str, Iterable] | None = None) -> list[str]:
    """The modules a rule's script runs: its imports' closure plus the used sources' modules where they load."""
    mods = closure([], script)
    extra = []
    for kind, used in (sources_used or {}).items():
        if LOADERS[kind] in mods:
            extra += [m for src in used for m in src.modules]
    return closure(mods + extra) if extra else mods


def code_version(script: str | Path, sources_used: dict[str, Iterable] | None = None) -> str:
    """`<version>+<hash>` of a rule's script and every module it runs."""
    script = Path(script)
    h = hashlib.sha1(script.read_bytes())
    for name in rule_modules(script, sources_used):
        h.update(name.encode())
        h.update(module_file(name).read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"
