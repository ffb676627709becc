"""polypsi as a Snakemake `module:` of another workflow (README, "Use as a module"): a dry run plans every rule."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

OUTER = """\
configfile: "polypsi.yaml"


module polypsi:
    snakefile:
        "{snakefile}"
    config:
        config["polypsi"]


use rule * from polypsi as polypsi_*


rule all:
    input:
        rules.polypsi_all.input,
    default_target: True
"""


def test_polypsi_plans_as_a_module_of_another_workflow(tmp_path):
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    (tmp_path / "polypsi.yaml").write_text(yaml.safe_dump({"polypsi": smoke}))
    (tmp_path / "Snakefile").write_text(OUTER.format(snakefile=ROOT / "Snakefile"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--directory", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    planned = {line.split()[0] for line in p.stdout.splitlines() if line.startswith("polypsi_")}
    # every stage of the smoke run, under the module's prefix; outputs land in the outer workflow's results/
    for rule in ("render_images", "index_dataset", "mine_topk", "embed_patches", "score", "calibrate", "report",
                 "interventions", "recovery"):
        assert f"polypsi_{rule}" in planned, rule
    assert "results/smoke/report/auroc.csv" in p.stdout
