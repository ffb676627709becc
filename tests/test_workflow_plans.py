"""Workflow runs that need no finished smoke run: plans, refusals and a timm ViT block end to end.

A file of their own, so that `make test` (one worker per file) runs them beside the smoke run's tests."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_runs import PSI_COLUMNS, ROOT, snakemake

pytestmark = pytest.mark.slow


def test_vit_block_end_to_end(tmp_path):
    """A timm ViT block as the analysed layer, from rendering to calibration and interventions (small, one shard)."""
    fast = {"shards": {"images": 1, "channels": 1, "draws": 1}, "nulls": {"m": 4},
            "model": {"layers": ["blocks.3"]}, "crops": {"size": {"blocks.3": 32}},
            "interventions": {"n_channels": 2, "layer": "blocks.3"}}
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(fast))
    run = tmp_path / "results" / "smoke_timm_vit"
    snakemake(tmp_path, "results/smoke_timm_vit/psi/blocks.3.parquet",
              "results/smoke_timm_vit/interventions/blocks.3.parquet", "--configfile",
              str(ROOT / "config" / "smoke.yaml"), str(ROOT / "config" / "examples" / "timm_vit.yaml"),
              str(tmp_path / "fast.yaml"))
    geometry = json.loads((run / "geometry.json").read_text())
    g = geometry["layers"]["blocks.3"]
    assert geometry["input_size"] == 64 and g["kind"] == "tokens"
    assert (g["stride"], g["height"], g["width"], g["channels"]) == (8, 8, 8, 192) and 2 <= g["offset"] <= 5
    psi = pd.read_parquet(run / "psi" / "blocks.3.parquet")
    assert list(psi.columns[:len(PSI_COLUMNS)]) == PSI_COLUMNS and (psi["unit_kind"] == "channel").sum() == 192
    assert (psi["unit_kind"] == "or_unit").sum() == 16 and psi["index"].notna().any()
    patches = pd.read_parquet(run / "patches" / "blocks.3.parquet")
    assert patches["u"].between(0, 7).all() and patches["v"].between(0, 7).all()
    trials = pd.read_parquet(run / "interventions" / "blocks.3.parquet")
    assert trials["channel"].nunique() >= 1 and trials["layer"].eq("blocks.3").all()


def test_misspelt_key_is_rejected_by_name(tmp_path):
    p = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"),
                  "--config", "minning={'topk': 3}", check=False)
    assert p.returncode != 0
    assert "unknown key 'minning'" in p.stderr and "did you mean 'mining'" in p.stderr


@pytest.mark.parametrize("overlay", [None, "paper.yaml"])
def test_paper_setup_plans_every_rule_over_its_shards(tmp_path, overlay):
    """The GPU-workstation configs build their job graph here (nothing runs; weights and data are absent)."""
    args = ["-n", "--resources", "gpu=1"] + (["--configfile", str(ROOT / "config" / overlay)] if overlay else [])
    p = snakemake(tmp_path, *args)
    counts = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    shards = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["shards"]
    assert counts["download_tiny_imagenet"] == 1 and counts["mine_topk"] == shards["images"]
    assert counts["embed_patches"] == 2 * shards["channels"] and counts["score"] == 2 * shards["channels"] * shards["draws"]
    assert counts["k_scores"] == counts["score"] and counts["k_sensitivity"] == 2
    for rule in ("geometry", "index_dataset", "embed_prompts", "merge_topk", "calibrate", "report", "interventions"):
        assert counts.get(rule, 0) >= 1, rule


def test_one_gpu_workstation_plans_few_fat_jobs(tmp_path):
    """The workstation profile with config/one_gpu.yaml: one job of each GPU stage per layer, three GPU jobs admitted."""
    profile = yaml.safe_load((ROOT / "profiles" / "workstation" / "config.yaml").read_text())
    assert profile["resources"] == ["gpu=3"] and profile["cores"] == 16
    p = snakemake(tmp_path, "-n", "--profile", str(ROOT / "profiles" / "workstation"),
                  "--configfile", str(ROOT / "config" / "one_gpu.yaml"), "--cores", "16")  # the profile's cores
    counts = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["mine_topk"] == 1 and counts["geometry"] == 1
    for rule in ("embed_patches", "score", "k_scores", "score_or_units", "patch_embeddings"):
        assert counts[rule] == 2, rule  # layer3 and layer4
    # the profile's threads reach the jobs: mining's image loaders take 8 of the 16 cores
    mine = p.stdout.split("rule mine_topk:\n", 1)[1].split("\n\n", 1)[0]
    assert "    threads: 8" in mine.splitlines(), mine
    # when GPU slots are short, the GPU jobs that start the longest chains go first
    for rule, first in [("embed_patches", True), ("score", True), ("k_scores", True), ("interventions", True),
                        ("score_or_units", False), ("neuron_embeddings", False)]:
        jobs = p.stdout.split(f"rule {rule}:\n")[1:]
        assert jobs and all(("    priority: 1\n" in j.split("\n\n", 1)[0]) == first for j in jobs), rule
    # the browser's image work waits for the mined top-K only (beside embedding and scoring), one job a layer
    assert counts["sprites"] == 2 and counts["browser"] == 1
    for job in p.stdout.split("rule sprites:\n")[1:]:
        inputs = job.split("input: ", 1)[1].split("\n", 1)[0].split(", ")
        assert sorted(Path(f).name for f in inputs) in [["dataset.parquet", "geometry.json", f"{l}.parquet"]
                                                        for l in ("layer3", "layer4")], inputs


def test_k_scores_are_sharded_like_the_scoring(tmp_path):
    """k_scores plans one job per score job (layer x channel shard x draw shard) with the same inputs; k_sensitivity
    reads all of its layer's k_scores and scores, and needs no calibrate."""
    (tmp_path / "shards.yaml").write_text(yaml.safe_dump({"shards": {"channels": 2, "draws": 3},
                                                          "report": {"k_sensitivity_draws": 4}}))
    layers = ["layer3", "layer4"]
    p = snakemake(tmp_path, "-n", *[f"results/smoke/report/robustness/k_sensitivity_{l}.parquet" for l in layers],
                  "--configfile", str(ROOT / "config" / "smoke.yaml"), str(tmp_path / "shards.yaml"))
    jobs, job = {}, None
    for line in p.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            job = {"rule": line.split()[-1].rstrip(":")}
        elif job is not None and line.strip().startswith(("input:", "output:")):
            key, value = line.strip().split(":", 1)
            job[key] = [f.strip() for f in value.split(",")]
            if key == "output":
                jobs[job["output"][0]] = job
    by_rule = {}
    for j in jobs.values():
        by_rule.setdefault(j["rule"], []).append(j)
    shards = [(l, c, d) for l in layers for c in range(2) for d in range(3)]
    want = {f"results/smoke/k_scores/{l}/shard{c}/draws{d}.parquet" for l, c, d in shards}
    assert {j["output"][0] for j in by_rule["k_scores"]} == want
    for l, c, d in shards:
        score = jobs[f"results/smoke/scores/{l}/shard{c}/draws{d}.parquet"]
        assert jobs[f"results/smoke/k_scores/{l}/shard{c}/draws{d}.parquet"]["input"] == score["input"]
    for l in layers:
        (ks,) = [j for j in by_rule["k_sensitivity"] if j["output"] == [f"results/smoke/report/robustness/"
                                                                        f"k_sensitivity_{l}.parquet"]]
        mine = {f for f in want | {f.replace("/k_scores/", "/scores/") for f in want} if f"/{l}/" in f}
        assert mine <= set(ks["input"]) and not [f for f in ks["input"] if "/k_scores/" in f and f not in mine]
    assert "calibrate" not in by_rule


def test_unknown_layer_is_rejected_by_name_before_any_job(tmp_path):
    t0 = time.monotonic()
    p = snakemake(tmp_path, "--configfile", str(ROOT / "config" / "smoke.yaml"),
                  "--config", "model={'source': 'torchvision', 'name': 'resnet18', 'weights': None, "
                  "'layers': ['layer5', 'layer4']}", check=False)
    assert p.returncode != 0 and time.monotonic() - t0 < 60
    assert "'layer5' is not a module of the model; close names: ['layer4'" in p.stderr
    assert "crops.size" not in p.stderr and not (tmp_path / "results").exists()


def test_python_entry_plans_from_its_own_file(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "examples" / "python_entry.yaml").read_text())
    cfg["model"]["entry"] = f"{ROOT / 'config' / 'examples' / 'my_model.py'}:build"
    (tmp_path / "entry.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"), str(tmp_path / "entry.yaml"))
    assert "mine_topk" in p.stdout and "geometry" in p.stdout
    cfg["model"]["layers"] = ["stage3"]
    cfg["crops"]["size"] = {"stage3": 8}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"), str(tmp_path / "bad.yaml"),
                  check=False)
    assert p.returncode != 0 and "'stage3' is not a module of the model; close names" in p.stderr


def _stages_on_the_device():
    """Stage functions of the library that read `job.device` (found in the source, nothing imported)."""
    import ast
    found = set()
    for path in (ROOT / "src" / "polypsi").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(n, ast.Attribute) and n.attr == "device" and isinstance(n.value, ast.Name)
                    and n.value.id == "job" for n in ast.walk(node)):
                found.add(node.name)
    return found


def _rules_on_the_device():
    """Rules whose script runs a stage that reads `job.device` (from workflow/rules and workflow/scripts)."""
    import re
    stages = _stages_on_the_device()
    rules = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)", smk.read_text(), re.M | re.S):
            script = re.search(r'script_path\("(\w+)"\)', body)
            if script:
                text = (ROOT / "workflow" / "scripts" / f"{script.group(1)}.py").read_text()
                if any(f"import {s}" in text for s in stages):
                    rules.add(name)
    return rules


@pytest.mark.parametrize("device", ["auto", "cuda", "cpu"])
def test_jobs_that_may_use_cuda_declare_the_gpu(tmp_path, device):
    """Every job that may run on CUDA declares gpu=1 (device auto or cuda); with device cpu no job declares it."""
    may_use_cuda = _rules_on_the_device()
    assert {"mine_topk", "embed_patches", "embed_prompts", "score", "score_or_units", "k_scores",
            "neuron_embeddings", "interventions"} <= may_use_cuda
    assert "k_sensitivity" not in may_use_cuda  # tables only since its scoring moved to k_scores
    p = snakemake(tmp_path, "-n", "--config", f"device={device}")  # the paper's setup: every rule but text_head
    gpu, rule = {}, None
    for line in p.stdout.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            res = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].replace(" ", "").split(","))
            gpu.setdefault(rule, set()).add(int(res.get("gpu", 0)))
    assert len(gpu) > 15, p.stdout[-2000:]
    for name, values in gpu.items():
        want = 1 if device != "cpu" and name in may_use_cuda else 0
        assert values == {want}, (name, values)
