"""The report stage on a generated run: every table and figure, with numbers checked against sklearn/scipy."""


import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from .fixtures import DIM, INPUT, K, LAYERS, N_OR_UNITS, SAME_NAME_CHANNEL, load_run, make_run

from polypsi.config import Config
from polypsi.io import read_table, write_table
from polypsi.job import Files, Job
from polypsi.report.build import report_stage

FIGS = ["fig_hist", "fig_roc", "fig_violin", "fig_k", "fig_khat", "fig_text_head", "fig_seeds"]


def _fake_robustness(root, psi, k_values, rng):
    """Per-layer k-subset and null-seed tables in the formats the k_sensitivity / seed_split rules write."""
    ks, seeds = [], []
    for layer, df in psi.items():
        rows = []
        for k in k_values:
            noisy = df.psi + rng.normal(0, 0.3 / k, len(df))
            rows.append(pd.DataFrame({"channel": df.channel, "psi": noisy, "status": df.status, "k": k, "m": 6}))
        p = root / "report" / "robustness" / f"k_sensitivity_{layer}.parquet"
        write_table(pd.concat(rows, ignore_index=True), p)
        ks.append(str(p))
        split = pd.DataFrame({"channel": df.channel, "psi_odd": df.psi * rng.uniform(0.9, 1.1, len(df)),
                              "status_odd": df.status, "psi_even": df.psi, "status_even": df.status})
        p = root / "report" / "robustness" / f"null_seeds_{layer}.parquet"
        write_table(split, p)
        seeds.append(str(p))
    return ks, seeds


def run_report(cfg, layers, inp, out):
    """The report rule's stage on a Job built by hand, as a notebook would."""
    cfg.model.layers = list(layers)
    report_stage(Job(cfg=cfg, input=Files(**inp), output=Files(**out)))


def _report_io(root, rep, layers, ks, seeds):
    """The report rule's inputs (a generated run under root) and outputs (under rep)."""
    inp = {kind: [str(root / kind / f"{l}.parquet") for l in layers] for kind in ["psi", "null_psi", "clusters", "patches"]}
    inp.update(k_sensitivity=ks, seed_split=seeds, text_head=[], dataset=str(root / "dataset.parquet"),
               geometry=str(root / "geometry.json"))
    out = {k: rep / f"{k}.csv" for k in ["auroc", "ks", "k_hat", "robustness", "gallery", "null_diagnostics"]}
    out.update({k: rep / f"{k}.png" for k in FIGS})
    out.update(gallery_high=[rep / "gallery" / f"high_{l}.png" for l in layers],
               gallery_low=[rep / "gallery" / f"low_{l}.png" for l in layers])
    return inp, out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("run"))
    psi, null, clusters, patches, ds, geom = load_run(root)
    cfg = Config.model_validate({"run_name": "synthetic", "mining": {"topk": 12}, "nulls": {"m": 6},
                                 "report": {"k_values": [6, 9], "gallery_channels": 2, "gallery_patches": 4}})
    ks, seeds = _fake_robustness(root, psi, [6, 9], np.random.default_rng(1))
    layers = list(LAYERS)
    inp, out = _report_io(root, root / "report", layers, ks, seeds)
    run_report(cfg, layers, inp, out)
    return root, out, psi, null, clusters, ks, seeds


def test_every_output_is_written(report):
    _, out, *_ = report
    for key in FIGS + ["gallery_high", "gallery_low"]:
        for p in out[key] if isinstance(out[key], list) else [out[key]]:
            with Image.open(p) as im:
                assert im.size[0] > 100 and im.size[1] > 100, p


def test_auroc_csv_matches_sklearn(report):
    _, out, psi, null, *_ = report
    t = pd.read_csv(out["auroc"])
    assert set(t.columns) >= {"layer", "metric", "auroc", "n_real", "n_null"}
    for r in t.itertuples():
        a = psi[r.layer][psi[r.layer].status == "ok"][r.metric]
        b = null[r.layer][null[r.layer].status == "ok"][r.metric]
        assert r.auroc == pytest.approx(roc_auc_score(np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]))
        assert r.n_real == len(a) and r.n_null == len(b)


def test_ks_csv_matches_scipy(report):
    _, out, psi, *_ = report
    t = pd.read_csv(out["ks"])
    assert list(t.columns[:4]) == ["layer_a", "layer_b", "statistic", "pvalue"]
    (r,) = t.itertuples()
    a, b = psi[r.layer_a].psi.dropna(), psi[r.layer_b].psi.dropna()
    ref = sps.ks_2samp(a, b)
    assert (r.statistic, r.pvalue) == pytest.approx((ref.statistic, ref.pvalue))
    assert (r.median_a, r.median_b) == pytest.approx((np.median(a), np.median(b)))


def test_robustness_csv(report):
    _, out, psi, _, _, ks, seeds = report
    t = pd.read_csv(out["robustness"])
    assert set(t.analysis) == {"k_sensitivity", "null_seeds", "text_head"}
    for layer, kp, sp in zip(LAYERS, ks, seeds):
        ok = psi[layer][psi[layer].status == "ok"]
        sub = read_table(kp)
        for k in [6, 9]:
            r = t[(t.analysis == "k_sensitivity") & (t.layer == layer) & (t.setting == f"K={k}")].iloc[0]
            s = sub[(sub.k == k) & sub.channel.isin(ok.channel)].set_index("channel").psi.loc[ok.channel]
            assert r.rho == pytest.approx(sps.spearmanr(ok.psi, s).statistic)
            assert r.n == len(ok) and r.reference == "K=12, 6 draws"
        sp = read_table(sp)
        sp = sp[sp.channel.isin(ok.channel)]
        r = t[(t.analysis == "null_seeds") & (t.layer == layer)].iloc[0]
        assert r.rho == pytest.approx(sps.spearmanr(sp.psi_odd, sp.psi_even).statistic)
    th = t[t.analysis == "text_head"]
    assert len(th) == len(LAYERS) and th.note.str.startswith("skipped").all() and th.rho.isna().all()


def test_gallery_and_k_hat_tables(report):
    """The galleries rank real channels by the index (not PSI) and show PSI beside it; OR-units never enter."""
    root, out, psi, null, clusters, *_ = report
    g = pd.read_csv(out["gallery"])
    assert list(g.columns[:5]) == ["layer", "gallery", "channel", "index", "psi"]
    # the fixture's index and PSI disagree on the top channel, so a PSI ranking would fail below
    assert any(df["index"].idxmax() != df["psi"].idxmax() for df in psi.values())
    for layer in LAYERS:
        ok = psi[layer][psi[layer].status == "ok"].sort_values("index")
        high = g[(g.layer == layer) & (g.gallery == "high")]
        low = g[(g.layer == layer) & (g.gallery == "low")]
        assert list(dict.fromkeys(high.channel)) == ok.channel.iloc[::-1][:2].tolist()
        assert list(dict.fromkeys(low.channel)) == ok.channel[:2].tolist()
        shown = g[g.layer == layer].drop_duplicates("channel").set_index("channel")
        np.testing.assert_allclose(shown["index"], ok.set_index("channel").loc[shown.index, "index"])
        np.testing.assert_allclose(shown["psi"], ok.set_index("channel").loc[shown.index, "psi"])
        n_cl = clusters[layer].groupby("channel").size()
        assert len(high) == n_cl.loc[high.channel.unique()].sum()
        assert high.concept_1.notna().all() and high.gap.notna().all()
        raw = read_table(root / "psi" / f"{layer}.parquet")
        ors = set(raw.loc[raw.unit_kind == "or_unit", "channel"])
        assert ors and not ors & set(g.channel[g.layer == layer])  # the OR-units top the raw table
    kh = pd.read_csv(out["k_hat"])
    for layer in LAYERS:
        ok = psi[layer][psi[layer].status == "ok"]
        assert kh[kh.layer == layer].n_all.sum() == len(ok)


def test_gallery_figure_has_one_strip_per_cluster(tmp_path):
    """Channel ids are not row positions: a gallery of channels 9 and 4 draws all their clusters, best first."""
    from polypsi.report.gallery import gallery_table, plot_gallery

    root = make_run(tmp_path)
    psi, _, clusters, patches, ds, geom = load_run(root)
    layer = "layer3"
    p, c, pt = psi[layer].copy(), clusters[layer].copy(), patches[layer].copy()
    for t in (p, c, pt):
        t["channel"] = t["channel"] * 2 + 1  # ids 1, 3, 5, ...
    heights = []
    for n in (1, 2):
        chosen = p[p.status == "ok"].sort_values("index", ascending=False).head(n)
        t = gallery_table(layer, chosen, c, "high")
        plot_gallery(layer, "high", t, pt, ds, geom["input_size"], tmp_path / f"g{n}.png", per_cluster=3, thumb=32)
        with Image.open(tmp_path / f"g{n}.png") as im:
            heights.append(im.size[1])
        assert len(t) == c[c.channel.isin(chosen.channel)].shape[0] >= 2 * n
    assert heights[1] > heights[0] * 1.4


def test_layer_without_valid_channels_still_reports(tmp_path):
    """A layer whose channels are all dead gets NaN statistics with n = 0 and figures that say so."""
    root = make_run(tmp_path)
    psi, *_ = load_run(root)
    raw = read_table(root / "psi" / "layer4.parquet")
    real = raw.unit_kind == "channel"  # the OR-units stay valid: they must not count as the layer's channels
    raw.loc[real, ["psi", "log_psi", "S_hat", "Q_hat", "D_hat", "index"]] = np.nan
    raw.loc[real, "status"] = "dead: top activation <= 0"
    write_table(raw, root / "psi" / "layer4.parquet")
    psi["layer4"] = raw[real]
    cfg = Config.model_validate({"mining": {"topk": 12}, "nulls": {"m": 6},
                                 "report": {"k_values": [6, 9], "gallery_channels": 1}})
    ks, seeds = _fake_robustness(root, psi, [6, 9], np.random.default_rng(3))
    layers = list(LAYERS)
    inp, out = _report_io(root, tmp_path / "out", layers, ks, seeds)
    run_report(cfg, layers, inp, out)
    a = pd.read_csv(out["auroc"])
    assert a[a.layer == "layer4"].auroc.isna().all() and (a[a.layer == "layer4"].n_real == 0).all()
    assert a[a.layer == "layer3"].auroc.notna().all()
    k = pd.read_csv(out["ks"]).iloc[0]
    assert np.isnan(k.statistic) and k.n_b == 0
    r = pd.read_csv(out["robustness"])
    assert (r[(r.layer == "layer4") & (r.analysis != "text_head")].n == 0).all()
    for p in [*out["gallery_high"], *out["gallery_low"], *(out[f] for f in FIGS)]:
        assert p.stat().st_size > 1000


def test_k_sensitivity_figure_with_control_row(tmp_path):
    from polypsi.report import figures

    rob = pd.DataFrame({"analysis": "k_sensitivity", "layer": ["l3", "l3", "l3", "l4", "l4", "l4"],
                        "setting": ["K=10", "K=20", "K=50, 5 draws"] * 2, "rho": [0.2, 0.4, 0.8, 0.3, 0.5, 0.9]})
    figures.k_sensitivity(rob, tmp_path / "k.png", 50)
    with Image.open(tmp_path / "k.png") as im:
        assert im.size[0] > 300


def test_null_diagnostics_count_low_sd_per_component(report):
    from polypsi.calibration import low_sd_counts

    _, out, psi, *_ = report
    d = pd.read_csv(out["null_diagnostics"])
    assert set(d.columns) >= {"layer", "component", "null", "n_channels", "n_low_sd", "share_low_sd", "median_sd"}
    assert len(d) == 3 * len(psi)
    for layer, df in psi.items():
        live = df[~df.status.str.startswith("dead")]
        got = d[d.layer == layer].set_index("component")
        assert got.n_low_sd.to_dict() == low_sd_counts(live)
        assert (got.n_channels == len(live)).all()
        assert got.loc["S", "null"] == "gaussian" and got.loc["D", "null"] == "unrelated_prompts"


def test_null_diagnostics_on_flagged_channels():
    from polypsi.config import NullConfig
    from polypsi.report.stats import null_diagnostics

    df = pd.DataFrame({"status": ["ok", "low_null_sd:S", "low_null_sd:S,D", "dead: top activation <= 0"],
                       "S_sd": [0.1, 0.0, 0.0, 0.0], "Q_sd": [0.2, 0.1, 0.1, 0.0], "D_sd": [0.1, 0.1, 0.0, 0.0]})
    d = null_diagnostics({"l": df}, NullConfig(s_null="rotation"), 1e-4).set_index("component")
    assert d.n_low_sd.to_dict() == {"S": 2, "Q": 0, "D": 1}
    assert (d.n_channels == 3).all() and d.loc["S", "null"] == "rotation"
    assert d.loc["S", "share_low_sd"] == pytest.approx(2 / 3)


def test_generated_run_follows_the_contract(tmp_path):
    make_run(tmp_path)
    psi, null, clusters, patches, ds, geom = load_run(tmp_path)
    raw = load_run(tmp_path, raw=True)[0]
    need = {"channel", "S", "Q", "D", "S_hat", "Q_hat", "D_hat", "psi", "log_psi", "k_hat", "status", "top_activation",
            "index", "unit_kind"}
    for layer in LAYERS:
        assert need <= set(psi[layer].columns) and need <= set(null[layer].columns)
        assert (psi[layer].status != "ok").sum() == 1
        assert psi[layer]["index"].isna().sum() == 1 and (psi[layer]["index"] < 0).any()
        ors = raw[layer][raw[layer].unit_kind == "or_unit"]
        assert len(ors) == N_OR_UNITS and ors.channel.min() > psi[layer].channel.max()
        assert not set(ors.channel) & (set(clusters[layer].channel) | set(patches[layer].channel))
        names = clusters[layer][clusters[layer].channel == SAME_NAME_CHANNEL].concept_1
        assert names.duplicated().any()
        p = patches[layer]
        assert {"channel", "rank", "image_id", "activation", "cluster", "label", "y0", "x0", "y1", "x1"} <= set(p.columns)
        assert ((p.y1 - p.y0) == geom["layers"][layer]["crop"]).all() and (p.y1 <= INPUT).all()
        sizes = clusters[layer].groupby("channel")["size"].sum()
        assert (sizes == K).all()
    _, emb = read_table(tmp_path / "patches" / "layer3.parquet", embedding="embedding")
    assert emb.shape == (len(patches["layer3"]), DIM)


def test_pick_channels_ranks_real_channels_by_index():
    """Highest / lowest index among real ok channels, PSI ignored; OR-units and dead channels never picked."""
    from polypsi.report.gallery import gallery_table, pick_channels

    psi = pd.DataFrame({"channel": [0, 1, 2, 3, 4, 5], "index": [0.2, -0.4, 1.1, np.nan, 0.5, 7.0],
                        "psi": [0.9, 0.8, 0.1, np.nan, 0.3, 0.99], "S_hat": 0.5, "Q_hat": 0.5, "D_hat": 0.5,
                        "k_hat": 2, "status": ["ok", "ok", "ok", "dead: top activation <= 0", "low_null_sd:S", "ok"],
                        "unit_kind": ["channel"] * 5 + ["or_unit"]})
    assert pick_channels(psi, 2, "high").channel.tolist() == [2, 0]
    assert pick_channels(psi, 5, "low").channel.tolist() == [1, 0, 2]
    clusters = pd.DataFrame({"channel": [2, 2], "cluster": [0, 1], "size": [6, 6], "concept_1": ["a", "b"]})
    t = gallery_table("l", pick_channels(psi, 1, "high"), clusters, "high")
    assert list(t.columns[:5]) == ["layer", "gallery", "channel", "index", "psi"] and t["index"].tolist() == [1.1, 1.1]
    with pytest.raises(ValueError, match="lacks column 'index'"):
        pick_channels(psi.drop(columns="index"), 2, "high")


def test_report_without_index_column_says_rerun_calibrate(tmp_path):
    root = make_run(tmp_path)
    raw = read_table(root / "psi" / "layer3.parquet")
    write_table(raw.drop(columns="index"), root / "psi" / "layer3.parquet")
    cfg = Config.model_validate({"mining": {"topk": 12}, "nulls": {"m": 6}, "report": {"k_values": [6, 9]}})
    inp, out = _report_io(root, tmp_path / "out", list(LAYERS), [], [])
    with pytest.raises(ValueError, match=r"layer 'layer3' lacks column\(s\) \['index'\].*calibrate"):
        run_report(cfg, list(LAYERS), inp, out)
