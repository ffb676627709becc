"""End-to-end: the offline smoke configuration through every rule, in a temporary folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
PSI_COLUMNS = ["channel", "S", "Q", "D", "S_mu", "S_sd", "Q_mu", "Q_sd", "D_mu", "D_sd",
               "S_hat", "Q_hat", "D_hat", "psi", "log_psi", "k_hat", "status"]
PATCH_COLUMNS = ["channel", "rank", "image_id", "u", "v", "activation", "cluster", "label", "embedding"]

pytestmark = pytest.mark.slow


def snakemake(workdir, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args],
                       capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    snakemake(work, "--configfile", str(ROOT / "config" / "smoke.yaml"))
    return work / "results" / "smoke"


def _smoke_cfg():
    return yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def test_psi_tables(smoke):
    cfg = _smoke_cfg()
    for layer, channels in (("layer3", 256), ("layer4", 512)):
        table = pd.read_parquet(smoke / "psi" / f"{layer}.parquet")
        assert list(table.columns[: len(PSI_COLUMNS)]) == PSI_COLUMNS
        psi = table[table["unit_kind"] == "channel"]
        assert len(psi) == channels and psi["channel"].tolist() == list(range(channels))
        # OR-units: their own rows after the channels, ids after the layer's, parts among the live channels
        ors = table[table["unit_kind"] == "or_unit"]
        n_or = _smoke_cfg()["validation"]["or_units_per_layer"]
        assert len(ors) == n_or and (ors["channel"] >= channels).all() and ors["channel"].is_unique
        assert set(ors["part_a"]) | set(ors["part_b"]) <= set(psi.loc[psi["top_activation"] > 0, "channel"])
        assert np.isfinite(ors["index"]).all() and np.isfinite(ors["psi"]).all()
        live = psi["status"] != "dead: top activation <= 0"
        assert np.isfinite(psi.loc[live, ["index", "semanticlens", "monosemanticity"]]).all().all()
        assert (psi["index_chance"] == psi["index_chance"].iloc[0]).all()
        np.testing.assert_allclose(psi["index"], psi["S"] * psi["contrast"] - psi["index_chance"], atol=1e-12)
        assert psi["status"].notna().all() and (psi["status"] != "").all()
        ok = psi[psi["status"] == "ok"]
        assert len(ok) > 0
        # never a silent NaN: every NaN psi has a status that says why
        assert not psi.loc[psi["status"] == "ok", ["S_hat", "Q_hat", "D_hat", "psi"]].isna().any().any()
        assert ok["S"].between(0, 1).all() and ok["Q"].between(0, 1).all()
        for h in ("S_hat", "Q_hat", "D_hat"):
            assert ((ok[h] > 0) & (ok[h] < 1)).all()
        assert np.allclose(ok["psi"], ok["S_hat"] * ok["Q_hat"] * ok["D_hat"], rtol=1e-5)
        pos = ok["psi"] > 1e-300  # below that, psi underflows while log_psi (computed from z) stays exact
        assert np.allclose(ok.loc[pos, "log_psi"], np.log(ok.loc[pos, "psi"]), atol=1e-5)
        assert np.isfinite(ok["log_psi"]).all()
        assert ok["k_hat"].between(2, 5).all()
        null = pd.read_parquet(smoke / "null_psi" / f"{layer}.parquet")
        assert (null["unit_kind"] == "channel").sum() == channels and list(null.columns[: len(PSI_COLUMNS)]) == PSI_COLUMNS
        # the held-out null neurons sit at the index's chance level, 0
        assert abs(null.loc[null["unit_kind"] == "channel", "index"].median()) < 0.03
    assert cfg["nulls"]["m"] >= 3


def test_patch_tables(smoke):
    k = _smoke_cfg()["mining"]["topk"]
    for layer, channels in (("layer3", 256), ("layer4", 512)):
        p = pd.read_parquet(smoke / "patches" / f"{layer}.parquet")
        assert all(c in p.columns for c in PATCH_COLUMNS)
        assert len(p) == channels * k
        assert (p.groupby("channel")["rank"].apply(list) == [list(range(k))] * channels).all()
        assert (p.groupby("channel")["activation"].apply(lambda a: (np.diff(a.to_numpy()) <= 0).all())).all()
        emb = np.stack(p["embedding"].to_numpy())
        assert emb.shape == (len(p), 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
        psi = pd.read_parquet(smoke / "psi" / f"{layer}.parquet").set_index("channel")
        assert (p.groupby("channel")["cluster"].max() == psi["k_hat"] - 1).all()


def test_auroc_table(smoke):
    a = pd.read_csv(smoke / "report" / "auroc.csv")
    assert {"layer", "metric", "auroc"} <= set(a.columns)
    assert set(a["metric"]) >= {"psi", "S_hat", "Q_hat", "D_hat"} and set(a["layer"]) == {"layer3", "layer4"}
    assert a["auroc"].between(0, 1).all()


def test_every_rule_logged(smoke):
    logs = list((smoke / "logs").rglob("*.log"))
    names = {p.parent.name if p.parent.name != "logs" else p.stem for p in logs}
    for rule in ("render_images", "index_dataset", "geometry", "mine_topk", "merge_topk", "embed_patches",
                 "embed_prompts", "score", "calibrate", "report", "or_units", "score_or_units", "recovery"):
        assert rule in names, f"no log for {rule}"


def test_top_k_identical_for_two_and_three_image_shards(smoke, tmp_path):
    """The main run mines with 2 image shards; 3 image shards give the same top-K table (so the same patches).

    To stay fast this run stops at layer4's merged top-K: everything after it is computed from that
    table alone. Any shard count against one pass is tested on the top-K merge itself
    (tests/test_mining.py), and every later stage is seeded per channel, whatever the channel shards.
    """
    cfg = _smoke_cfg()
    cfg.update(run_name="shards3", shards={"images": 3, "channels": 1, "draws": 1})
    cfg["model"]["layers"] = ["layer4"]
    cfg["crops"]["size"] = {"layer4": cfg["crops"]["size"]["layer4"]}
    (tmp_path / "c3.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "results/shards3/topk/layer4.parquet", "--configfile", str(tmp_path / "c3.yaml"))
    got = pd.read_parquet(tmp_path / "results" / "shards3" / "topk" / "layer4.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(smoke / "topk" / "layer4.parquet"))
    assert len(list((tmp_path / "results" / "shards3" / "mining").glob("shard*/layer4.parquet"))) == 3


def test_config_change_reruns_only_what_it_touches(smoke):
    work = smoke.parent.parent

    def planned(configfile):
        p = snakemake(work, "-n", "--configfile", str(configfile))
        return {line.split()[-1].rstrip(":") for line in p.stdout.splitlines()
                if line.startswith(("rule ", "localrule "))}

    assert planned(ROOT / "config" / "smoke.yaml") == set()
    cfg = _smoke_cfg()
    cfg["nulls"]["m"] = cfg["nulls"]["m"] - 1
    (work / "changed.yaml").write_text(yaml.safe_dump(cfg))
    changed = planned(work / "changed.yaml")
    assert {"score", "calibrate", "report"} <= changed
    assert not changed & {"mine_topk", "merge_topk", "embed_patches", "embed_prompts", "render_images", "geometry"}
    # calibration settings re-calibrate without re-scoring
    cfg = _smoke_cfg()
    cfg["calibration"] = {"eps": 1e-5, "sd_tol": 1e-3}
    (work / "calibration.yaml").write_text(yaml.safe_dump(cfg))
    changed = planned(work / "calibration.yaml")
    assert {"calibrate", "report"} <= changed
    assert not changed & {"score", "embed_patches", "mine_topk"}
    # a prompt list edited in place re-embeds the prompts (Snakemake compares its time and content)
    templates = ROOT / "src" / "polypsi" / "data" / "templates.txt"
    st, text = templates.stat(), templates.read_text()
    try:
        templates.write_text(text + "# an edit\n")  # a comment: the prompts stay the same, the file does not
        changed = planned(ROOT / "config" / "smoke.yaml")
    finally:
        templates.write_text(text)
        os.utime(templates, (st.st_atime, st.st_mtime))
    assert "embed_prompts" in changed and not changed & {"mine_topk", "geometry", "embed_patches"}
    # settings that change speed, not results, and keys a rule does not read, rerun nothing
    cfg = _smoke_cfg()
    cfg["mining"].update(batch_size=5, channels_last=not cfg["mining"].get("channels_last", True))
    cfg["embedder"]["batch_size"] = 7
    cfg.update(device="auto", world={"seed": 3})
    cfg["data"].update(download=False, md5=None)
    (work / "neutral.yaml").write_text(yaml.safe_dump(cfg))
    assert planned(work / "neutral.yaml") == set()


def test_misspelt_key_is_rejected_by_name(tmp_path):
    p = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"),
                  "--config", "minning={'topk': 3}", check=False)
    assert p.returncode != 0
    assert "unknown key 'minning'" in p.stderr and "did you mean 'mining'" in p.stderr


def _kill_tree(pid):
    """SIGKILL to a process, its process group and every descendant (as `kill -9` of the whole tree)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    os.killpg(pid, signal.SIGKILL)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_killed_run_resumes_with_the_same_command(smoke):
    """SIGKILL to the whole Snakemake process tree while jobs run; the same command, run again, ends the run
    (no --unlock, no --rerun-incomplete) with tables identical to the bit."""
    work = smoke.parent.parent
    before = {k: pd.read_parquet(smoke / k / "layer3.parquet") for k in ("psi", "null_psi", "patches")}
    (smoke / "scores" / "layer3" / "shard0" / "draws0.parquet").unlink()
    (smoke / "embeddings" / "layer3" / "shard1.parquet").unlink()
    (smoke / "psi" / "layer3.parquet").unlink()
    args = [*[f"results/smoke/{k}/layer3.parquet" for k in before], "--configfile", str(ROOT / "config" / "smoke.yaml")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.Popen([*SNAKEMAKE, "--directory", str(work), "--cores", "2", *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    incomplete = work / ".snakemake" / "incomplete"
    deadline = time.monotonic() + 120
    try:
        while not any(f.is_file() for f in incomplete.glob("*")):  # a job has started
            assert p.poll() is None and time.monotonic() < deadline, "no job started"
            time.sleep(0.1)
        time.sleep(1.0)  # into the job
    finally:
        _kill_tree(p.pid)
        p.wait()
    assert any((work / ".snakemake" / "locks").glob("*.lock")), "the killed run left no lock to test with"
    resumed = snakemake(work, *args)
    assert "removed the Snakemake locks" in resumed.stderr
    for k, df in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(smoke / k / "layer3.parquet"), df, check_exact=True)


def test_report_files_and_html_report(smoke, tmp_path):
    rep = smoke / "report"
    for f in ("auroc.csv", "null_diagnostics.csv", "ks.csv", "robustness.csv", "k_hat.csv", "gallery.csv", "psi_hist.png", "roc.png",
              "depth_violin.png", "k_sensitivity.png", "k_hat.png", "null_seeds.png", "interventions.csv",
              "interventions.png", "browser/index.html"):
        assert (rep / f).is_file(), f"missing report/{f}"
    ks = pd.read_csv(rep / "ks.csv")
    assert {"layer_a", "layer_b", "statistic", "pvalue"} <= set(ks.columns) and len(ks) == 1
    rob = pd.read_csv(rep / "robustness.csv")
    assert {"k_sensitivity", "null_seeds", "text_head"} <= set(rob["analysis"])
    iv = pd.read_csv(rep / "interventions.csv")
    assert iv["condition"].tolist() == ["Aligned", "Non-aligned", "Random", "Shuffled-position", "Ablate-elsewhere"]
    rec = pd.read_csv(rep / "recovery.csv")  # no planted truth in the smoke run: OR-units only
    assert set(rec["truth"]) == {"or_units"} and set(rec["layer"]) == {"layer3", "layer4", "all"}
    assert {"index", "psi", "semanticlens", "monosemanticity"} <= set(rec["score"])
    assert rec["auroc"].between(0, 1).all() and (rec["ci_low"] <= rec["auroc"]).all() and (rec["auroc"] <= rec["ci_high"]).all()
    per_layer = rec[rec["layer"] != "all"]
    n_or = _smoke_cfg()["validation"]["or_units_per_layer"]
    assert per_layer["win_rate"].between(0, 1).all() and (per_layer["n_pos"] == n_or).all()
    assert (rec.loc[rec["layer"] == "all", "n_pos"] == 2 * n_or).all()
    assert (rep / "recovery.png").stat().st_size > 5_000
    html = tmp_path / "report.html"
    snakemake(smoke.parent.parent, "--configfile", str(ROOT / "config" / "smoke.yaml"), "--report", str(html))
    assert html.stat().st_size > 10_000


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
    for rule in ("geometry", "index_dataset", "embed_prompts", "merge_topk", "calibrate", "report", "interventions"):
        assert counts.get(rule, 0) >= 1, rule


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
    assert list(psi.columns[:len(PSI_COLUMNS)]) == PSI_COLUMNS and len(psi) == 192
    patches = pd.read_parquet(run / "patches" / "blocks.3.parquet")
    assert patches["u"].between(0, 7).all() and patches["v"].between(0, 7).all()
    trials = pd.read_parquet(run / "interventions" / "blocks.3.parquet")
    assert trials["channel"].nunique() >= 1 and trials["layer"].eq("blocks.3").all()
