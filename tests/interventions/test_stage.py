"""The workflow stages on the colour-detector model, from a Job built by hand.

tests/interventions/data/ holds the trial tables and summaries the stages wrote before the
interventions module became a package, for the same inputs and settings: the replacement protocol's
rows must not change, except for the `index` column added beside `psi` when the channels came to be
chosen by the index (its values are checked against the psi table here; every other column is compared
exactly) and the `protocol` column added with the insertion protocol, whose rows (and the columns only
they fill) come after them and are tested in test_insert.py and test_causal.py.
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

    both, old = pq.read_table(trials), pq.read_table(DATA / f"trials_{name}.parquet")
    assert both.column_names[:2] == ["layer", "protocol"]
    protocol = both.column("protocol").to_pylist()
    n = protocol.count("replace")
    assert protocol == ["replace"] * n + ["insert"] * (len(protocol) - n)
    assert both.column_names[2:len(old.column_names) + 2] == _with_index(old.column_names)[1:]
    new = both.slice(0, n).select(_with_index(old.column_names))
    new = new.replace_schema_metadata(both.schema.metadata)
    assert new.column_names == _with_index(old.column_names)
    index = dict(zip(read_table(files["psi"]).channel, read_table(files["psi"])["index"]))
    assert new.column("index").to_pylist() == [index[c] for c in new.column("channel").to_pylist()]
    assert new.schema.field("index").type == "double"
    new = new.drop_columns(["index"])
    assert new.schema.remove_metadata().equals(old.schema.remove_metadata())
    assert new.equals(old)
    table = read_table(trials)
    replaced = table[table["protocol"] == "replace"][_with_index(old.column_names)].drop(columns="index")
    pd.testing.assert_frame_equal(replaced, read_table(DATA / f"trials_{name}.parquet"), check_exact=True)
    assert (table.loc[table["protocol"] == "insert", "condition"].isin(["Cluster", "Random", "Off-RF", "Ablate"])).all()

    out = dict(csv=tmp_path / "summary.csv", png=tmp_path / "summary.png")
    stage.interventions_summary_stage(Job(cfg=cfg, input=Files(trials=trials), output=Files(**out)))
    summary = pd.read_csv(out["csv"], keep_default_na=False, dtype=str)
    assert list(summary.columns) == ["protocol"] + list(pd.read_csv(DATA / f"summary_{name}.csv").columns)
    replaced = summary[summary["protocol"] == "replace"].drop(columns="protocol")
    assert replaced.to_csv(index=False, lineterminator="\n") == (DATA / f"summary_{name}.csv").read_text()
    assert summary.loc[summary["protocol"] == "insert", "condition"].tolist() == ["Cluster", "Random", "Off-RF",
                                                                                  "Ablate"]
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
    table, full = read_table(trials), read_table(DATA / "trials_colour_world.parquet")
    empty = table[table["protocol"] == "replace"][_with_index(list(full.columns))]
    assert empty.empty
    assert (empty.drop(columns="index").dtypes.astype(str) == full.dtypes.astype(str)).all()
    assert empty["index"].dtype == float
    assert (table["protocol"] == "insert").any()  # insertion needs no second cluster: it still runs
    out = dict(csv=tmp_path / "summary.csv", png=tmp_path / "summary.png")
    stage.interventions_summary_stage(Job(cfg=cfg, input=Files(trials=trials), output=Files(**out)))
    summary = pd.read_csv(out["csv"])
    replaced = summary[summary["protocol"] == "replace"]
    assert (replaced["n"] == 0).all() and replaced["dropped_reasons"].str.contains("k_hat >= 2").all()
    assert out["png"].stat().st_size > 1000


def test_replacement_alone_writes_the_table_of_before(tmp_path, monkeypatch):
    """interventions.protocols: [replace] gives the replacement rows only, with the protocol column."""
    monkeypatch.setattr(models, "load_model", lambda cfg, device: ColourNet().eval())  # imported by the stage
    case = dict(CASES["colour_world"])
    case["interventions"] = dict(case["interventions"], protocols=["replace"])
    cfg, files = _job_inputs(tmp_path / "in", case)
    out = dict(trials=tmp_path / "act.parquet", causal=tmp_path / "causal.parquet")
    stage.interventions_stage(Job(cfg=cfg, input=Files(**files), output=Files(**out), wildcards={"layer": "act"}))
    table, old = read_table(out["trials"]), read_table(DATA / "trials_colour_world.parquet")
    assert (table["protocol"] == "replace").all()
    pd.testing.assert_frame_equal(table.drop(columns=["protocol", "index"]), old, check_exact=True)
    assert read_table(out["causal"]).empty


def test_summary_writes_the_causal_table_and_agreement_with_a_truth(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda cfg, device: ColourNet().eval())  # imported by the stage
    case = dict(CASES["colour_world"])
    case["interventions"] = dict(case["interventions"], insert=dict(images=2, donors=2, neutral_quantile=0.5))
    cfg, files = _job_inputs(tmp_path / "in", case)
    ran = dict(trials=tmp_path / "act.parquet", causal=tmp_path / "act_causal.parquet")
    stage.interventions_stage(Job(cfg=cfg, input=Files(**files), output=Files(**ran), wildcards={"layer": "act"}))
    truth = tmp_path / "units.csv"
    pd.DataFrame(dict(layer="act", channel=[0, 1, 2], kind=["poly", "mono", "dead"],
                      concepts=["red;yellow", "green", ""])).to_csv(truth, index=False)
    out = {k: tmp_path / f"{k}.{ext}" for k, ext in
           [("csv", "csv"), ("png", "png"), ("insert_png", "png"), ("causal", "csv"), ("agreement", "csv")]}
    stage.interventions_summary_stage(Job(cfg=cfg, input=Files(trials=ran["trials"], causal=ran["causal"],
                                                               truth=[str(truth)]), output=Files(**out)))
    causal = pd.read_csv(out["causal"]).set_index("channel")
    assert causal["n_driving"].to_dict() == {0: 2, 1: 1}  # red and yellow drive channel 0, green channel 1
    assert causal.loc[0, "truth_kind"] == "poly" and causal.loc[0, "truth_n_concepts"] == 2
    agree = pd.read_csv(out["agreement"]).set_index("statistic")
    assert agree.loc["poly_share_ge2", "value"] == 1.0 and agree.loc["mono_share_eq1", "value"] == 1.0
    summary = pd.read_csv(out["csv"])
    ins = summary[summary["protocol"] == "insert"].set_index("condition")
    # a unit is the mean of its channel's clusters: 4 units of channel 0 at (1 + 0.5) / 2, 4 of channel 1 at 1
    assert ins.loc["Cluster", "mean_delta"] == pytest.approx((4 * 0.75 + 4 * 1.0) / 8, abs=1e-5)
    assert ins.loc["Random", "mean_delta"] == pytest.approx(0, abs=1e-6) and ins.loc["Random", "pvalue"] < 1e-3
    assert out["insert_png"].read_bytes()[:4] == b"\x89PNG"
