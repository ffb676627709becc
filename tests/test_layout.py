"""The test layout mirrors the package, and helpers shared by tests are not named like tests."""

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent
PKG = HERE.parent / "src" / "polypsi"
# Test modules about the workflow or the whole package rather than one module.
CROSS_CUTTING = {
    "test_workflow", "test_workflow_plans", "test_workflow_scripts", "test_import_graph", "test_layout",
    "test_catalog", "test_envs", "test_module", "test_plan",  # the workflow as a catalog entry, module and plan
    "test_bad_inputs",  # bad and odd inputs across data, config and preflight
    "test_slurm",  # profiles/slurm, and the workflow on a single-node SLURM cluster
    "test_critical_path",  # benchmarks/critical_path.py on the workflow's plan
}


def test_test_folders_are_the_package_subpackages():
    for d in HERE.iterdir():
        if d.is_dir() and not d.name.startswith((".", "__")) and any(d.glob("test_*.py")):
            assert (PKG / d.name / "__init__.py").is_file(), f"tests/{d.name}/ has no polypsi.{d.name} to mirror"
            assert (d / "__init__.py").is_file(), f"tests/{d.name}/ needs __init__.py (test basenames repeat)"


def test_every_test_module_names_a_module_of_the_package():
    for f in HERE.rglob("test_*.py"):
        rel = f.relative_to(HERE)
        if rel.stem in CROSS_CUTTING:
            continue
        name = rel.stem.removeprefix("test_")
        base = PKG.joinpath(*rel.parts[:-1])
        assert (base / f"{name}.py").is_file() or (base / name / "__init__.py").is_file(), \
            f"tests/{rel} tests no module polypsi/{'/'.join(rel.parts[:-1] + (name,))}"


def test_no_test_module_is_imported_as_a_helper():
    """Shared helpers live in modules not named test_*, so pytest does not collect them as tests."""
    for f in HERE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            else:
                continue
            bad = [n for n in names if n.split(".")[-1].startswith("test_")]
            assert not bad, f"{f.relative_to(HERE)} imports test module(s) {bad}; move what they share into a helper"
