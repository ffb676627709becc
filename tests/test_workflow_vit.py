"""A timm ViT block end to end: its own file, so that `make test` runs it beside the smoke run's tests."""

import json

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
