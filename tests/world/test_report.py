import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from polypsi.world.report import COLUMNS, ground_truth_report, ground_truth_tables


def _tables(seed=0):
    rng = np.random.default_rng(seed)
    truth, psi, clusters = [], {}, {}
    names = ["red disc", "blue square", "green ring", "yellow star"]
    for layer in ("layer3", "layer4"):
        rows = []
        for ch in range(30):
            kind = ["mono", "poly", "dead"][ch % 3]
            n = {"mono": 1, "poly": 2 + (ch % 2), "dead": 0}[kind]
            concepts = [names[(ch + j) % 4] for j in range(n)]
            truth.append({"layer": layer, "channel": ch, "kind": kind, "n_concepts": n, "concepts": ";".join(concepts)})
            hats = rng.uniform(0.3, 1.0, 3) if kind == "poly" else rng.uniform(0.0, 0.8, 3)
            dead = kind == "dead"
            raw = np.nan if dead else rng.uniform(0, 1, 3)
            rows.append({
                "S": raw if dead else raw[0], "Q": raw if dead else raw[1], "D": raw if dead else raw[2],
                "channel": ch, "S_hat": np.nan if dead else hats[0], "Q_hat": np.nan if dead else hats[1],
                "D_hat": np.nan if dead else hats[2], "psi": np.nan if dead else hats.prod(),
                "log_psi": np.nan if dead else np.log(hats.prod()), "k_hat": int(rng.integers(2, 6)),
                "status": "dead: top activation <= 0" if dead else ("ok" if ch % 5 else "low_null_sd:Q"),
            })
            for k in range(rows[-1]["k_hat"]):
                top = concepts[k % n] if (n and rng.random() < 0.7) else names[int(rng.integers(4))]
                clusters.setdefault(layer, []).append({"channel": ch, "cluster": k, "size": 5, "silhouette": 0.1,
                                                       "concept_1": top.replace(" ", "_") if k == 0 else top,
                                                       "gap": 0.1, "concept_2": "x", "similarity_1": 0.3})
        psi[layer] = pd.DataFrame(rows).sample(frac=1, random_state=seed)  # order must not matter
    return psi, {k: pd.DataFrame(v) for k, v in clusters.items()}, pd.DataFrame(truth)


def test_auroc_matches_sklearn():
    psi, clusters, truth = _tables()
    summary, per_channel, _ = ground_truth_tables(psi, clusters, truth)
    assert list(summary.columns) == COLUMNS
    for layer in ("layer3", "layer4", "all"):
        m = per_channel if layer == "all" else per_channel[per_channel["layer"] == layer]
        for subset in ("finite", "ok"):
            d = m[m["kind"].isin(["mono", "poly"])]
            if subset == "ok":
                d = d[d["status"] == "ok"]
            for metric in ("psi", "S_hat", "Q_hat", "D_hat", "S", "Q", "D"):
                want = roc_auc_score(d["kind"] == "poly", d[metric])
                got = summary.query("layer == @layer and section == 'auroc' and metric == @metric and subset == @subset")
                assert len(got) == 1
                assert got["value"].iloc[0] == pytest.approx(want)
                assert got["n_poly"].iloc[0] == (d["kind"] == "poly").sum()


def test_k_confusion_counts_every_live_channel():
    psi, clusters, truth = _tables(1)
    summary, per_channel, _ = ground_truth_tables(psi, clusters, truth)
    k = summary[(summary["section"] == "k_confusion") & (summary["layer"] == "layer3")]
    live = per_channel[(per_channel["layer"] == "layer3") & per_channel["kind"].isin(["mono", "poly"])]
    want = pd.crosstab(live["n_concepts"], live["k_hat"])
    for _, row in k.iterrows():
        assert row["value"] == want.loc[row["true_n"], row["k_hat"]] if row["k_hat"] in want.columns else row["value"] == 0
    assert k["value"].sum() == len(live)


def test_naming_accuracy_by_brute_force():
    psi, clusters, truth = _tables(2)
    summary, _, _ = ground_truth_tables(psi, clusters, truth)
    t = truth.set_index(["layer", "channel"])
    for kind in ("mono", "poly", "all"):
        hits = []
        for layer, c in clusters.items():
            for _, r in c.iterrows():
                tr = t.loc[(layer, r["channel"])]
                if tr["kind"] == "dead" or (kind != "all" and tr["kind"] != kind):
                    continue
                hits.append(r["concept_1"].replace("_", " ") in tr["concepts"].split(";"))
        got = summary.query("layer == 'all' and section == 'naming' and metric == 'accuracy' and subset == @kind")
        assert got["value"].iloc[0] == pytest.approx(np.mean(hits))
        assert got["n_clusters"].iloc[0] == len(hits)


def test_report_writes_csv_and_figure(tmp_path):
    psi, clusters, truth = _tables(3)
    out = ground_truth_report(psi, clusters, truth, tmp_path / "report" / "ground_truth.csv", tmp_path / "gt.png")
    back = pd.read_csv(tmp_path / "report" / "ground_truth.csv")
    assert len(back) == len(out) and set(back["section"]) == {"auroc", "k_confusion", "naming"}
    assert (tmp_path / "gt.png").stat().st_size > 10_000


def test_missing_channels_are_named():
    psi, clusters, truth = _tables(4)
    psi["layer3"] = psi["layer3"][psi["layer3"]["channel"] != 7]
    with pytest.raises(ValueError, match=r"lacks planted channel\(s\) \[7\]"):
        ground_truth_tables(psi, clusters, truth)
    with pytest.raises(ValueError, match="no channels of layer 'layer9'"):
        ground_truth_tables({"layer9": psi["layer4"]}, clusters, truth)


def _with_or_units(psi: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The psi tables with `index`, `unit_kind` and two OR-unit rows per layer (channels after the real ones),
    whose scores would change every AUROC if they were counted."""
    out = {}
    for layer, df in psi.items():
        df = df.assign(index=np.log(df["psi"]) + 2.0, unit_kind="channel")
        ors = df.iloc[:2].assign(channel=[df.channel.max() + 1, df.channel.max() + 2], psi=1.0, log_psi=0.0,
                                 S_hat=1.0, Q_hat=1.0, D_hat=1.0, S=1.0, Q=1.0, D=1.0, index=9.0, k_hat=2,
                                 status="ok", unit_kind="or_unit")
        out[layer] = pd.concat([df, ors], ignore_index=True)
    return out


def test_or_unit_rows_are_ignored():
    psi, clusters, truth = _tables(6)
    summary, per_channel, _ = ground_truth_tables(psi, clusters, truth)
    with_or = _with_or_units(psi)
    summary2, per_channel2, _ = ground_truth_tables(with_or, clusters, truth)
    pd.testing.assert_frame_equal(summary, summary2)
    assert len(per_channel2) == len(per_channel) == len(truth)
    assert (per_channel2["unit_kind"] == "channel").all()
    pd.testing.assert_frame_equal(per_channel, per_channel2.drop(columns=["index", "unit_kind"]))


def test_channel_table_shows_the_index_beside_psi():
    from polypsi.world.report import channel_table

    psi, clusters, truth = _tables(7)
    _, per_channel, _ = ground_truth_tables(_with_or_units(psi), clusters, truth)
    comp = {l: pd.DataFrame({"channel": per_channel.channel[per_channel.layer == l], "concept": "none", "share": 1.0})
            for l in psi}
    t = channel_table(per_channel, comp)
    assert list(t.columns[5:7]) == ["index", "psi"] and len(t) == len(truth)
    np.testing.assert_allclose(t["index"], per_channel["index"])
    _, old, _ = ground_truth_tables(psi, clusters, truth)  # psi tables from before the index: no column
    assert "index" not in channel_table(old, comp).columns


def test_topk_composition_finds_the_object_at_each_crop():
    from polypsi.world.report import channel_table, topk_composition

    desc = {
        "concepts": [{"name": "red disc"}, {"name": "blue square"}],
        "images": [
            {"image_id": 7, "objects": [{"concept": 0, "x": 10.0, "y": 12.0, "r": 5.0},
                                        {"concept": 1, "x": 50.0, "y": 50.0, "r": 9.0}]},
            {"image_id": 3, "objects": [{"concept": 1, "x": 30.0, "y": 30.0, "r": 9.0}]},
        ],
    }
    dataset = pd.DataFrame({"image_id": [0, 1], "path": ["x/red_disc/00007.png", "x/blue_square/00003.png"]})
    # Crops in 128 px input coordinates (2x the 64 px render): centres (12,10), (50,50), (30,30), (2,62).
    boxes = [(0, 0, 14, 24, 34), (0, 80, 80, 120, 120), (1, 40, 40, 80, 80), (1, 0, 100, 8, 128)]
    patches = pd.DataFrame([(5, i, y0, x0, y1, x1) for i, y0, x0, y1, x1 in boxes],
                           columns=["channel", "image_id", "y0", "x0", "y1", "x1"])
    comp = topk_composition(patches, dataset, desc, input_size=128, image_size=64).set_index("concept")["share"]
    assert comp.to_dict() == {"blue square": 0.5, "none": 0.25, "red disc": 0.25}
    per_channel = pd.DataFrame([{"layer": "layer3", "channel": 5, "kind": "poly", "n_concepts": 2,
                                 "concepts": "red disc;blue square", "psi": 0.5, "S_hat": 0.5, "Q_hat": 0.5,
                                 "D_hat": 0.5, "S": 0.1, "Q": 0.1, "D": 0.1, "k_hat": 2, "status": "ok"}])
    t = channel_table(per_channel, {"layer3": comp.reset_index().assign(channel=5)})
    assert t.loc[0, "planted_share"] == pytest.approx(0.75) and t.loc[0, "minority_share"] == pytest.approx(0.25)


def test_report_run_builds_the_tables_once_and_writes_what_the_report_writes(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import polypsi.world.report as report
    from polypsi.io import write_json, write_table

    psi, clusters, truth = _tables(5)
    run = tmp_path / "run"
    for layer in psi:
        write_table(psi[layer], run / "psi" / f"{layer}.parquet")
        write_table(clusters[layer], run / "clusters" / f"{layer}.parquet")
        write_table(pd.DataFrame({"channel": np.arange(30).repeat(2), "image_id": np.tile([0, 1], 30),
                                  "y0": 0, "x0": 0, "y1": 40, "x1": 40}), run / "patches" / f"{layer}.parquet")
    write_table(pd.DataFrame({"image_id": [0, 1], "path": ["i/red_disc/00000.png", "i/blue_square/00001.png"]}),
                run / "dataset.parquet")
    write_json({"concepts": [{"name": "red disc"}, {"name": "blue square"}],
                "images": [{"image_id": 0, "objects": [{"concept": 0, "x": 10.0, "y": 10.0, "r": 6.0}]},
                           {"image_id": 1, "objects": [{"concept": 1, "x": 30.0, "y": 30.0, "r": 9.0}]}]},
               run / "world" / "world.json")
    write_json({"input_size": 128, "layers": {}}, run / "geometry.json")
    cfg = SimpleNamespace(run_name="x", model=SimpleNamespace(layers=["layer3", "layer4"]),
                          world=SimpleNamespace(image_size=64))
    monkeypatch.setattr(report, "ground_truth", lambda world: truth)
    calls = []
    tables = report.ground_truth_tables
    monkeypatch.setattr(report, "ground_truth_tables", lambda *a: calls.append(1) or tables(*a))
    np.random.seed(0)  # the strip plot's jitter
    summary = report.report_run(cfg, run)
    assert len(calls) == 1
    np.random.seed(0)
    direct = ground_truth_report(psi, clusters, truth, tmp_path / "direct.csv", tmp_path / "direct.png")
    pd.testing.assert_frame_equal(summary, direct)
    assert (run / "report" / "ground_truth.csv").read_bytes() == (tmp_path / "direct.csv").read_bytes()
    channels = pd.read_csv(run / "report" / "ground_truth_channels.csv")
    assert len(channels) == 60 and channels["planted_share"].notna().any()
    assert (run / "report" / "ground_truth.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
