"""The workflow stages on the colour-detector model, from a Job built by hand.

tests/interventions/data/ holds the trial tables and summaries the stages wrote before the
interventions module became a package, for the same inputs and settings: the tables must not change,
except for the `index` column added beside `psi` when the channels came to be chosen by the index
(its values are checked against the psi table here; every other column is compared exactly).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import polypsi.interventions.stage as stage
import polypsi.models as models
from polypsi.config import Config
from polypsi.io import read_table, write_table
from polypsi.job import Files, Job

from .worlds import GEOMETRY, S, UNIT_STD, ZERO_MEAN, ColourNet, colour_world

DATA = Path(__file__).parent / "data"

CASES = {
    # every trial runs
    "colour_world": dict(interventions=dict(n_channels=3, sites_per_channel=7, batch_size=5)),
    # a site without an Aligned donor, and no free square for the elsewhere controls: -1 placeholders
    "placeholders": dict(interventions=dict(n_channels=3, sites_per_channel=6, region_scale=1.0), crop=20,
                         drop_yellow=True),
}


@pytest.fixture(autouse=True)
def _logger_restored():
    """The stage's logger stops propagating (runtime.get_logger); later caplog tests need it back."""
    lg = logging.getLogger("polypsi.interventions")
    state = lg.handlers[:], lg.propagate, lg.level
    yield
    lg.handlers[:], lg.propagate, lg.level = state


def _with_index(columns: list[str]) -> list[str]:
    """The stored tables' columns with `index` where the stage now writes it: after channel, before psi."""
    i = columns.index("psi")
    return columns[:i] + ["index"] + columns[i:]


def _job_inputs(folder: Path, case: dict) -> tuple[Config, dict]:
    folder.mkdir()
    dataset, patches, psi = colour_world(folder)
    if case.get("drop_yellow"):  # channel 0's yellow site keeps no other yellow image to take a donor from
        patches = patches[~((patches.channel == 0) & patches.image_id.isin([5, 6]))].copy()
        patches["rank"] = patches.groupby("channel").cumcount()
        patches = patches.reset_index(drop=True)
    geom = {"input_size": S, "layers": {"act": dict(GEOMETRY["layers"]["act"], crop=case.get("crop", 8))}}
    files = dict(psi=folder / "psi.parquet", patches=folder / "patches.parquet", dataset=folder / "dataset.parquet",
                 geometry=folder / "geometry.json")
    write_table(psi, files["psi"])
    write_table(patches, files["patches"])
    write_table(dataset, files["dataset"])
    files["geometry"].write_text(json.dumps(geom))
    cfg = Config(run_name="t", device="cpu", crops=dict(size={"act": 8}), interventions=case["interventions"],
                 model=dict(name="resnet18", weights=None, layers=["act"], input_size=S, mean=ZERO_MEAN,
                            std=UNIT_STD))
    return cfg, files


@pytest.mark.parametrize("name", sorted(CASES))
def test_stages_write_the_tables_of_before(tmp_path, monkeypatch, name):
    monkeypatch.setattr(models, "load_model", lambda cfg, device: ColourNet().eval())  # imported by the stage
    cfg, files = _job_inputs(tmp_path / "in", CASES[name])
    trials = tmp_path / "act.parquet"
    stage.interventions_stage(Job(cfg=cfg, input=Files(**files), output=Files(trials=trials),
                                  wildcards={"layer": "act"}))

    new, old = pq.read_table(trials), pq.read_table(DATA / f"trials_{name}.parquet")
    assert new.column_names == _with_index(old.column_names)
    index = dict(zip(read_table(files["psi"]).channel, read_table(files["psi"])["index"]))
    assert new.column("index").to_pylist() == [index[c] for c in new.column("channel").to_pylist()]
    assert new.schema.field("index").type == "double"
    meta = [c for c in new.schema.pandas_metadata["columns"] if c["name"] != "index"]
    new = new.drop_columns(["index"])
    assert new.schema.remove_metadata().equals(old.schema.remove_metadata())
    assert meta == old.schema.pandas_metadata["columns"]
    assert new.equals(old)
    pd.testing.assert_frame_equal(read_table(trials).drop(columns="index"),
                                  read_table(DATA / f"trials_{name}.parquet"), check_exact=True)

    out = dict(csv=tmp_path / "summary.csv", png=tmp_path / "summary.png")
    stage.interventions_summary_stage(Job(cfg=cfg, input=Files(trials=trials), output=Files(**out)))
    assert out["csv"].read_text() == (DATA / f"summary_{name}.csv").read_text()
    assert out["png"].read_bytes()[:4] == b"\x89PNG"


def test_no_eligible_channel_gives_an_empty_table_and_says_why(tmp_path, monkeypatch):
    """One-class data or no split channel: no trials, the run goes on, the summary and figure give the reason."""
    monkeypatch.setattr(models, "load_model", lambda cfg, device: ColourNet().eval())  # imported by the stage
    cfg, files = _job_inputs(tmp_path / "in", CASES["colour_world"])
    psi = read_table(files["psi"]).assign(k_hat=1)  # no channel split into clusters
    write_table(psi, files["psi"])
    trials = tmp_path / "act.parquet"
    stage.interventions_stage(Job(cfg=cfg, input=Files(**files), output=Files(trials=trials),
                                  wildcards={"layer": "act"}))
    empty, full = read_table(trials), read_table(DATA / "trials_colour_world.parquet")
    assert empty.empty and list(empty.columns) == _with_index(list(full.columns))
    assert (empty.drop(columns="index").dtypes.astype(str) == full.dtypes.astype(str)).all()
    assert empty["index"].dtype == float
    out = dict(csv=tmp_path / "summary.csv", png=tmp_path / "summary.png")
    stage.interventions_summary_stage(Job(cfg=cfg, input=Files(trials=trials), output=Files(**out)))
    summary = pd.read_csv(out["csv"])
    assert (summary["n"] == 0).all() and summary["dropped_reasons"].str.contains("k_hat >= 2").all()
    assert out["png"].stat().st_size > 1000
