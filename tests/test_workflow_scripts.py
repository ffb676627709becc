"""Every rule's script is one call, `run(snakemake, <rule>_stage)`, and the stage exists."""

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "workflow" / "rules"
SCRIPTS = ROOT / "workflow" / "scripts"
# Rules that reuse another rule's script with other settings.
REUSES = {"embed_patches_secondary": "embed_patches", "patch_embeddings_secondary": "patch_embeddings",
          "embed_prompts_secondary": "embed_prompts", "score_or_units": "score"}


def rule_scripts() -> dict[str, str]:
    out = {}
    for smk in RULES.glob("*.smk"):
        text = smk.read_text()
        for m in re.finditer(r"^\s*rule (\w+):(.*?)(?=^\s*rule \w+:|\Z)", text, re.S | re.M):
            s = re.search(r'script_path\("(\w+)"\)', m.group(2))
            if s:
                out[m.group(1)] = s.group(1)
    return out


def test_every_rule_runs_its_own_script_named_after_it():
    scripts = rule_scripts()
    assert len(scripts) >= 18
    for rule, script in scripts.items():
        assert script == REUSES.get(rule, rule), (rule, script)
    assert {p.stem for p in SCRIPTS.glob("*.py")} == set(scripts.values())


def test_every_script_is_one_call_of_its_stage():
    for path in SCRIPTS.glob("*.py"):
        tree = ast.parse(path.read_text())
        calls = [n for n in tree.body if isinstance(n, ast.Expr)]
        assert len(calls) == 1, path.name
        call = calls[0].value
        assert isinstance(call, ast.Call) and call.func.id == "run" and call.args[0].id == "snakemake", path.name
        stage = call.args[1].id
        assert stage == f"{path.stem}_stage", path.name
        (imp,) = [n for n in tree.body if isinstance(n, ast.ImportFrom) and stage in [a.name for a in n.names]]
        assert callable(getattr(importlib.import_module(imp.module), stage)), path.name
