"""End-to-end: the offline smoke configuration through every rule, in a temporary folder."""

import os
import re
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from workflow_runs import PATCH_COLUMNS, PSI_COLUMNS, ROOT, SNAKEMAKE, snakemake

pytestmark = pytest.mark.slow


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
        assert np.isfinite(psi.loc[live, ["index", "semanticlens"]]).all().all()
        # 1 - MS is undefined (NaN) where fewer than two top activations exceed the top-K minimum
        assert np.isfinite(psi.loc[live, "monosemanticity"]).mean() > 0.95
        assert (psi["index_chance"] == psi["index_chance"].iloc[0]).all()
        np.testing.assert_allclose(psi.loc[live, "index"], (psi["S"] * psi["contrast"] - psi["index_chance"])[live],
                                   atol=1e-12)
        assert psi.loc[~live, "index"].isna().all()
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
        psi = pd.read_parquet(smoke / "psi" / f"{layer}.parquet")
        psi = psi[psi["unit_kind"] == "channel"].set_index("channel")
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
    cfg.update(run_name="shards3", shards={"images": 3, "min_images": 16, "channels": 1, "draws": 1})
    cfg["model"]["layers"] = ["layer4"]
    cfg["crops"]["size"] = {"layer4": cfg["crops"]["size"]["layer4"]}
    (tmp_path / "c3.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "results/shards3/topk/layer4.parquet", "--configfile", str(tmp_path / "c3.yaml"))
    got = pd.read_parquet(tmp_path / "results" / "shards3" / "topk" / "layer4.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(smoke / "topk" / "layer4.parquet"))
    assert len(list((tmp_path / "results" / "shards3" / "mining").glob("shard*/layer4.parquet"))) == 3


# One change per row of the README's "What reruns" table, by the row's first key: an overlay merged over
# config/smoke.yaml (several for a row: every one must give the row's rules). One per row keeps the test short.
RERUN_PROBES = {
    "run_name": [{"run_name": "smoke_moved"}],
    "data.synthetic.*": [{"data": {"synthetic": {"seed": 1}}}],
    "data.max_images": [{"data": {"max_images": 40}}],
    "model.*": [{"model": {"init_seed": 1}}],
    "crops.*": [{"crops": {"size": {"layer3": 24}}}],
    "mining.topk": [{"mining": {"one_site_per_image": True}}],
    "embedder.*": [{"embedder": {"init_seed": 1}}, {"device": "cuda"}],
    "shards.channels": [{"shards": {"channels": 3}}],
    "prompts.*": [{"prompts": {"include_class_names": False}}],
    "stats.*": [{"nulls": {"m": 5}}],
    "calibration.*": [{"calibration": {"eps": 1e-5, "sd_tol": 1e-3}}],
    "index.method": [{"index": {"method": "psi"}}],
    "neuron_embeddings.module": [{"neuron_embeddings": {"module": {"layer3": "layer3.1.conv2"}}}],
    "neuron_embeddings.foote_threshold": [{"neuron_embeddings": {"foote_threshold": 0.3}}],
    "validation.or_units_per_layer": [{"validation": {"or_units_per_layer": 32}}],
    "validation.bootstrap": [{"validation": {"bootstrap": 100}}],
    "interventions.*": [{"interventions": {"sites_per_channel": 3}}],
    "interventions.test_unit": [{"interventions": {"test_unit": "channel"}}],
    "report.k_values": [{"report": {"k_sensitivity_draws": 4}}],
    "report.thumb_size": [{"report": {"thumb_size": 48}}],
    "report.high_psi_quantile": [{"report": {"gallery_patches": 4}}],
    # settings that change speed, and keys of sections the run does not use
    "device": [{"device": "auto", "mining": {"batch_size": 5, "channels_last": True}, "embedder": {"batch_size": 7},
                "interventions": {"batch_size": 3}, "neuron_embeddings": {"batch_size": 5}, "world": {"seed": 3},
                "data": {"download": False, "md5": None}}],
}
# Rows about files, checked by editing the file (prompts, code) or by the inputs of the jobs that read it.
PROMPT_FILE = ROOT / "src" / "polypsi" / "data" / "templates.txt"
CODE_FILE = ROOT / "src" / "polypsi" / "report" / "figures.py"
FILE_READERS = {"model": {"geometry", "mine_topk", "interventions", "neuron_embeddings"},
                "embedder": {"embed_patches", "embed_prompts"}}


def _rerun_table():
    """The README's "What reruns" rows: {first key or file of the change cell: rules cell}."""
    section = (ROOT / "README.md").read_text().split("\n### What reruns\n", 1)[1]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        change, rules = (c.strip() for c in line.strip().strip("|").split("|"))
        if change in ("change", "---"):
            continue
        rows[re.search(r"`([^`]+)`", change).group(1)] = rules
    return rows


def _expected(rules, table, every):
    """The rules a cell names: `a`, `b`; every rule; every rule but `a`; nothing; as `<row>`."""
    names = set(re.findall(r"`([a-z_]+)`", rules))
    if rules.startswith("as "):
        return _expected(table[re.search(r"`([^`]+)`", rules).group(1)], table, every)
    if rules == "nothing":
        return set()
    if rules.startswith("every rule but"):
        return every - names
    if rules.startswith("every rule"):
        return set(every)
    return names


def _planned(work, *configfiles, extra=()):
    """Rule names of the jobs a dry run plans, and {rule: its jobs' input files}; extra: targets, flags."""
    p = snakemake(work, "-n", *extra, "--configfile", str(ROOT / "config" / "smoke.yaml"), *map(str, configfiles))
    rules, inputs, rule = set(), {}, None
    for line in p.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[-1].rstrip(":")
            rules.add(rule)
        elif rule and line.strip().startswith("input:"):
            inputs.setdefault(rule, set()).update(f.strip() for f in line.split(":", 1)[1].split(","))
    rules.discard("all")
    return rules, inputs


def _image_added_plans(work, tmp_path):
    """A dry run of index_dataset on an indexed image folder after an image was added (the digest of the
    manifest of data.root is its param; that hidden and other files count for nothing: tests/test_manifest.py)."""
    from PIL import Image

    root = tmp_path / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (16, 16), (90, 40, 200)).save(root / cls / "0.png")
    overlay = tmp_path / "images.yaml"
    overlay.write_text(yaml.safe_dump({"run_name": "folder", "data": {"source": "imagefolder", "root": str(root)}}))
    target = ("results/folder/dataset.parquet",)
    snakemake(work, *target, "--configfile", str(ROOT / "config" / "smoke.yaml"), str(overlay))
    Image.new("RGB", (16, 16)).save(root / "b" / "1.png")
    return _planned(work, overlay, extra=target)[0]


def test_what_reruns_table_holds_row_by_row(smoke, tmp_path):
    """Every row of the README's "What reruns" table, by dry runs against the finished smoke run (two at a time).

    The settings row that reruns nothing also shows that the finished run is up to date.
    """
    from concurrent.futures import ThreadPoolExecutor

    work = smoke.parent.parent
    table = _rerun_table()
    file_rows = {"data.root", "prompts.concepts", "model.checkpoint", "embedder.checkpoint",
                 "src/polypsi/report/figures.py"}
    assert set(table) == set(RERUN_PROBES) | file_rows, "README rows and RERUN_PROBES differ"
    runs = []
    for key, probes in RERUN_PROBES.items():
        for i, overlay in enumerate(probes):
            path = tmp_path / f"{key.replace('*', 'all')}_{i}.yaml"
            path.write_text(yaml.safe_dump(overlay))
            runs.append((key, path))
    # checkpoints and your own model's file are inputs of the jobs that read them (replacing one reruns those)
    for name in ("model.pt", "embedder.pt"):  # files torch.save wrote (the preflight reads their first bytes)
        torch.save({}, tmp_path / name)
    entry = yaml.safe_load((ROOT / "config" / "examples" / "python_entry.yaml").read_text())
    my_model = ROOT / "config" / "examples" / "my_model.py"
    entry["model"].update(entry=f"{my_model}:build", checkpoint=str(tmp_path / "model.pt"))
    entry["embedder"] = {"checkpoint": str(tmp_path / "embedder.pt")}
    (tmp_path / "files.yaml").write_text(yaml.safe_dump(entry))
    runs.append(("files", tmp_path / "files.yaml"))
    with ThreadPoolExecutor(2) as pool:
        folder = pool.submit(_image_added_plans, work, tmp_path)
        planned = list(pool.map(lambda run: (*run, *_planned(work, run[1])), runs))
    every = next(rules for key, _, rules, _ in planned if key == "run_name")
    wrong = []
    # images under data.root: index_dataset reruns (and, its table rewritten, what follows: the settings row)
    if folder.result() != {"index_dataset"}:
        wrong.append(f"an image added under data.root plans {sorted(folder.result())}, not index_dataset")
    if not {"index_dataset"} <= _expected(table["data.root"], table, every) \
            == _expected(table["data.max_images"], table, every):
        wrong.append("data.root row")
    for key, path, rules, inputs in planned:
        if key == "files":
            for kind, files in (("model", [tmp_path / "model.pt", my_model]), ("embedder", [tmp_path / "embedder.pt"])):
                readers = [{r for r, fs in inputs.items() if str(f) in fs} for f in files]
                if any(r != FILE_READERS[kind] for r in readers):
                    wrong.append(f"{kind} files are inputs of {readers}, not {sorted(FILE_READERS[kind])}")
                # a replaced file reruns its readers and what follows them: the row of the settings they read
                if not FILE_READERS[kind] <= _expected(table[f"{kind}.checkpoint"], table, every) \
                        == _expected(table[f"{kind}.*"], table, every):
                    wrong.append(f"{kind}.checkpoint row")
            continue
        want = _expected(table[key], table, every)
        if rules != want:
            wrong.append(f"{key} ({path and path.name}): planned {sorted(rules)}, README says {sorted(want)}")
    assert not wrong, "\n".join(wrong)
    # files edited in place: Snakemake compares the time and content of a rule's inputs, and the code version
    for path, key in ((PROMPT_FILE, "prompts.concepts"), (CODE_FILE, "src/polypsi/report/figures.py")):
        st, text = path.stat(), path.read_text()
        try:
            path.write_text(text + "# an edit\n")  # a comment: nothing the file means changes, its content does
            assert _planned(work)[0] == _expected(table[key], table, every), key
        finally:
            path.write_text(text)
            os.utime(path, (st.st_atime, st.st_mtime))


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
    (smoke / "scores" / "layer3" / "shard0" / "draws0.parquet").unlink()  # a score job, then calibration, to run
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
    assert iv["protocol"].tolist() == ["replace"] * 5 + ["insert"] * 4
    assert iv["condition"].tolist() == ["Aligned", "Non-aligned", "Random", "Shuffled-position", "Ablate-elsewhere",
                                        "Cluster", "Random", "Off-RF", "Ablate"]
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
