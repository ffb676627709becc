"""The job object: built from Snakemake's script object, by hand, or from the workflow (mock_job)."""

from types import SimpleNamespace

import pandas as pd
import pytest
from snakemake.iocontainers import Namedlist  # the class of snakemake.input, .output, .log

from polypsi.config import Undeclared
from polypsi.errors import DatasetError, PolypsiError
from polypsi.job import Files, Job, mock_job, run
from polypsi.mining import merge_topk_stage


def _namedlist(**named):
    nl = Namedlist()
    for name, value in named.items():
        start = len(nl)
        if isinstance(value, list):
            nl.extend(value)
            nl._set_name(name, start, len(nl))
        else:
            nl.append(value)
            nl._set_name(name, start)
    return nl


def _smk(tmp_path, **kw):
    base = dict(input=_namedlist(a="x.parquet", many=["1.parquet", "2.parquet"]), output=_namedlist(out="y.parquet"),
                params=SimpleNamespace(config={"mining": {"topk": 7}}), wildcards=_namedlist(layer="layer3"),
                log=Namedlist([str(tmp_path / "logs" / "job.log")]), threads=2, rule="merge_topk",
                config={"device": "cpu", "mining": {"batch_size": 4}})
    base.update(kw)
    return SimpleNamespace(**base)


def test_files_give_named_paths_and_lists():
    f = Files(psi="a.parquet", layers=["l3.parquet", "l4.parquet"])
    assert f.psi == "a.parquet" and f["layers"] == ["l3.parquet", "l4.parquet"] and "psi" in f
    assert list(f.paths()) == ["a.parquet", "l3.parquet", "l4.parquet"]
    with pytest.raises(AttributeError, match="no file named 'clusters'"):
        f.clusters


def test_job_from_snakemake_reads_declared_settings_and_runtime_keys(tmp_path):
    job = Job.from_snakemake(_smk(tmp_path))
    assert job.input.many == ["1.parquet", "2.parquet"] and job.output.out == "y.parquet"
    assert job.wildcard("layer") == "layer3" and job.threads == 2 and job.rule == "merge_topk"
    assert job.cfg.mining.topk == 7 and job.cfg.mining.batch_size == 4 and job.cfg.device == "cpu"
    assert isinstance(job.cfg.nulls, Undeclared)
    with pytest.raises(PolypsiError, match="no wildcard 'shard'"):
        job.wildcard("shard")


def test_unnamed_files_are_refused(tmp_path):
    nl = _namedlist(a="x")
    nl.append("stray.parquet")
    with pytest.raises(PolypsiError, match="unnamed file"):
        Job.from_snakemake(_smk(tmp_path, input=nl))


def test_run_ends_a_user_error_with_its_message_and_exit_code_1(tmp_path):
    def stage(job):
        raise DatasetError("cannot read image bad.jpg")

    smk = _smk(tmp_path)
    with pytest.raises(SystemExit) as e:
        run(smk, stage)
    assert e.value.code == 1
    assert "polypsi error: cannot read image bad.jpg" in (tmp_path / "logs" / "job.log").read_text()


def test_out_of_memory_says_what_to_change_and_other_errors_propagate(tmp_path):
    import torch

    def gpu_oom(job):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total)\nmore")

    smk = _smk(tmp_path, rule="embed_patches")
    with pytest.raises(SystemExit) as e:
        run(smk, gpu_oom)
    assert e.value.code == 1
    log = (tmp_path / "logs" / "job.log").read_text()
    assert "rule embed_patches (layer=layer3) ran out of GPU memory (CUDA out of memory. Tried to allocate" in log
    assert "--resources gpu=1" in log and "embedder.batch_size" in log and "more" not in log

    def cpu_oom(job):
        raise torch.OutOfMemoryError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB")

    with pytest.raises(SystemExit):
        run(_smk(tmp_path), cpu_oom)
    log = (tmp_path / "logs" / "job.log").read_text()
    assert "rule merge_topk (layer=layer3) ran out of memory (DefaultCPUAllocator" in log and "--cores" in log

    def bug(job):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(_smk(tmp_path), bug)


def test_a_stage_runs_from_a_job_built_by_hand(tmp_path):
    from polypsi.config import Config
    from polypsi.io import write_table

    shards = []
    for i, acts in enumerate(([3.0, 1.0], [2.0, 5.0])):
        t = pd.DataFrame({"channel": [0, 0], "rank": [0, 1], "image_id": [2 * i, 2 * i + 1], "u": [0, 0],
                          "v": [0, 0], "activation": pd.Series(acts, dtype="float32")})
        t = t.sort_values("activation", ascending=False).assign(rank=[0, 1])
        write_table(t, tmp_path / f"s{i}.parquet")
        shards.append(tmp_path / f"s{i}.parquet")
    cfg = Config.model_validate({"mining": {"topk": 3}, "report": {"k_values": [3]}, "stats": {"k_max": 3}})
    merge_topk_stage(Job(cfg=cfg, input=Files(shards=shards), output=Files(topk=tmp_path / "topk.parquet")))
    got = pd.read_parquet(tmp_path / "topk.parquet")
    assert got.activation.tolist() == [5.0, 3.0, 2.0] and got["rank"].tolist() == [0, 1, 2]


def test_mock_job_asks_the_workflow_for_a_rule(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    job = mock_job("calibrate", root / "config" / "smoke.yaml", workdir=tmp_path, layer="layer3")
    assert job.output.psi == str(tmp_path / "results" / "smoke" / "psi" / "layer3.parquet")
    assert len(job.input.scores) == 2 and job.input.topk.endswith("topk/layer3.parquet")
    assert job.cfg.nulls.m == 6 and job.cfg.calibration.eps == 1e-6 and isinstance(job.cfg.embedder, Undeclared)
    with pytest.raises(PolypsiError, match="needs wildcard"):
        mock_job("calibrate", root / "config" / "smoke.yaml", workdir=tmp_path)
    with pytest.raises(PolypsiError, match="no rule 'calibrat'"):
        mock_job("calibrat", root / "config" / "smoke.yaml", workdir=tmp_path, layer="layer3")


def test_profiled_jobs_write_their_timings(tmp_path, monkeypatch):
    """With POLYPSI_PROFILE set (benchmarks/bench_pipeline.py), a job writes start-up, stage and forward seconds."""
    import json

    from polypsi.config import load_config
    from polypsi.job import Job, run
    from polypsi.runtime import FORWARD, forward_pass

    monkeypatch.setenv("POLYPSI_PROFILE", str(tmp_path / "profile"))
    monkeypatch.setitem(FORWARD, "seconds", 0.0)

    def stage(job):
        with forward_pass("cpu", 3):
            sum(range(1000))

    run(Job(cfg=load_config({}), rule="score", wildcards={"layer": "l", "cshard": "0"}), stage)
    rec = json.loads((tmp_path / "profile" / "score_cshard0_layerl.json").read_text())
    assert rec["rule"] == "score" and rec["stage_s"] >= 0 and rec["startup_s"] >= 0 and rec["peak_rss_mb"] > 0
    assert 0 < rec["forward_s"] <= rec["stage_s"] and rec["forward_items"] >= 3
