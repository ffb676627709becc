"""Plans (`snakemake -n`) of the overlays a user starts from: their shards fit their data."""

import os
import subprocess
import sys

import yaml
from PIL import Image
from workflow_runs import ROOT, snakemake


def _plan(workdir, *configfiles):
    args = ["--configfile", *map(str, configfiles)]  # one flag: a second --configfile replaces the first
    p = snakemake(workdir, "-n", "--resources", "gpu=1", *args)
    counts = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts, p.stderr


def test_my_data_overlay_plans_one_shard_of_each_kind(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(tmp_path / "imgs" / cls / f"{i}.png")
    overlay = yaml.safe_load((ROOT / "config" / "examples" / "my_data.yaml").read_text())
    overlay["data"]["root"] = str(tmp_path / "imgs")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(overlay))
    counts, _ = _plan(tmp_path, tmp_path / "mine.yaml")
    assert "download_tiny_imagenet" not in counts
    layers = len(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["model"]["layers"])
    assert counts["mine_topk"] == 1 and counts["embed_patches"] == layers  # not config.yaml's 8 and 4 x layers


def test_image_shards_are_capped_to_the_data_with_a_log_line(tmp_path):
    (tmp_path / "many.yaml").write_text(yaml.safe_dump({"shards": {"images": 10}}))
    counts, err = _plan(tmp_path, ROOT / "config" / "smoke.yaml", tmp_path / "many.yaml")
    assert counts["mine_topk"] == 3  # 48 generated images, at least 16 per shard
    assert "shards.images 10 -> 3" in err


def test_the_preflight_lists_every_problem_when_planning_and_downloads_when_a_run_starts(tmp_path):
    """Missing files stop even a dry run, all listed; a download that cannot happen stops a run before any job."""
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    bad = {"data": {"source": "imagefolder", "root": str(tmp_path / "absent")},
           "model": {**smoke["model"], "layers": ["layer3", "layer5"]},
           "prompts": {"templates": str(tmp_path / "templates.txt")}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1",
            "--directory", str(tmp_path)]
    smoke_yaml = str(ROOT / "config" / "smoke.yaml")
    p = snakemake(tmp_path, "-n", "--configfile", smoke_yaml, str(tmp_path / "bad.yaml"), check=False)
    assert p.returncode != 0 and "preflight: 3 problem(s)" in p.stderr, p.stderr[-2000:]
    for words in ("absent does not exist", "templates.txt", "'layer5' is not a module of the model"):
        assert words in p.stderr, words
    # Tiny-ImageNet from an archive that is not there: a dry run plans the download, a run refuses it at once
    tiny = {"data": {"source": "tiny_imagenet", "root": str(tmp_path / "tiny"), "download": True,
                     "url": f"file://{tmp_path}/tiny.zip"}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    p = subprocess.run([*base, "results/smoke/dataset.parquet", "--configfile", smoke_yaml, str(tmp_path / "tiny.yaml")],
                       capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "preflight: 1 problem(s)" in p.stderr, p.stderr[-2000:]
    assert f"{tmp_path}/tiny.zip cannot be reached" in p.stderr
    assert not (tmp_path / "results").exists() and not list((tmp_path / ".snakemake" / "locks").glob("*"))
