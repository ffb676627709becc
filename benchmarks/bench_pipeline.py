"""The whole pipeline on a paper-shaped workload, stage by stage, against bare forward passes in the same run.

    make benchmark IMAGES=500 CHANNELS=128          # python benchmarks/bench_pipeline.py --images 500 --channels 128
    python benchmarks/bench_pipeline.py --images 10000                  # the paper's scale (all channels), on a GPU
    python benchmarks/bench_pipeline.py --images 10000 --cores 16 --profile profiles/workstation \
        --image-shards 1 --channel-shards 1 --draw-shards 1             # one GPU, as docs/performance.md estimates

The workload is the paper's setup (config/config.yaml) with random weights and generated images, so it
needs no download: N generated 224 px images (12 classes), ResNet-50 layer3 and layer4 (the first C
channels of each, `benchmarks/bench_model.py`; all by default), K = 50 top sites, one per image, crops
of 96 / 160 px, open_clip ViT-B/32, M = 20 null draws, every report stage. The neuron-embedding view
is off (its module would have all of the layer's channels, not the first C).

The workflow runs under Snakemake with --cores (default: all), every job writing its timings
(POLYPSI_PROFILE). Before and after it, in this process, with the same device and the mining job's
thread count: a bare ResNet-50 forward pass (the mining settings: batch size, channels_last, fp32) over
random images, and a bare ViT-B/32 `encode_image` over random crops (embedder batch size), each on up to
--bare-items items. The ratios use the mean of the two measurements, so that a machine whose speed
drifts during the run (a busy neighbour, clock changes) is compared with its average; both are printed.
Printed per stage (rule): jobs, wall time (the jobs' durations summed, process start to end), start-up
(interpreter and imports, before the stage runs), the share of the stage's time in model forward passes,
throughput of the stage against the bare pass, peak memory; then the whole run's forward share (forward
seconds of all jobs / the workflow's wall time).
The last line is for machines:

    forward_share=<f> mining_ratio=<r> embed_ratio=<r> crops_embedded=<n> distinct_crops=<n>

mining_ratio = (images / mine_topk stage seconds) / bare forward throughput; embed_ratio = (distinct
crops / embed_patches stage seconds) / bare encode throughput; crops_embedded counts the rows of the
crop tables the embedding jobs wrote, distinct_crops the distinct (image, crop box) pairs of the
mined top-K tables, recomputed here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN = "bench"


def overlay(args) -> dict:
    cfg = {
        "run_name": RUN,
        "device": args.device,
        "data": {"source": "synthetic", "synthetic": {"n_images": args.images, "n_classes": 12, "image_size": 224,
                                                      "seed": 0}},
        "model": {"source": "python", "entry": f"{ROOT / 'benchmarks' / 'bench_model.py'}:build",
                  "kwargs": {"channels": args.channels}, "weights": None, "layers": ["layer3", "layer4"],
                  "input_size": 224},
        "embedder": {"name": "ViT-B-32", "pretrained": None},
        "neuron_embeddings": {"enabled": False},
    }
    shards = {k: v for k, v in (("images", args.image_shards), ("channels", args.channel_shards),
                                ("draws", args.draw_shards)) if v}
    if shards:
        cfg["shards"] = shards
    return cfg


def run_workflow(args, work: Path) -> float:
    (work / "bench.yaml").write_text(yaml.safe_dump(overlay(args)))
    prof, run = work / "profile", work / "results" / RUN
    keep = {prof / "geometry.json", run / "geometry.json"} if args.reuse_geometry else set()
    if prof.exists():
        for p in prof.glob("*.json"):
            if p not in keep:
                p.unlink()
    if run.exists():  # a fresh run, but for the layer geometry when asked to keep it (it depends on the model only)
        for p in sorted(run.rglob("*"), reverse=True):
            if p.is_file() and p not in keep and not (p.parent == run / "logs" and p.name == "geometry.log"):
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    env = {**os.environ, "POLYPSI_PROFILE": str(prof),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
           "--cores", str(args.cores), "--configfile", str(ROOT / "config" / "config.yaml"), str(work / "bench.yaml"),
           "--quiet", "progress"] + (["--profile", str(Path(args.profile).resolve())] if args.profile else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"the workflow failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return wall


def jobs_table(work: Path) -> pd.DataFrame:
    rows = [json.loads(p.read_text()) for p in sorted((work / "profile").glob("*.json"))]
    df = pd.DataFrame(rows)
    df["job_s"] = df["startup_s"] + df["stage_s"]
    return df


def crop_counts(work: Path) -> tuple[int, int]:
    """(rows of the crop tables the embedding jobs wrote, distinct (image, box) pairs of the mined top-K tables)."""
    from polypsi.croptable import distinct_crops

    run = work / "results" / RUN
    geometry = json.loads((run / "geometry.json").read_text())
    embedded = sum(len(pd.read_parquet(p, columns=["image_id"])) for p in (run / "crops").glob("*/shard*.parquet"))
    distinct = 0
    for layer, g in geometry["layers"].items():
        distinct += len(distinct_crops(pd.read_parquet(run / "topk" / f"{layer}.parquet"), g, geometry["input_size"]))
    return embedded, distinct


def rule_threads(rule: str, cores: int, profile: str | None = None) -> int:
    """The `threads:` of a workflow rule (the profile's set-threads, else its rule file), capped by --cores as
    Snakemake does."""
    if profile:
        set_threads = yaml.safe_load((Path(profile) / "config.yaml").read_text()).get("set-threads") or {}
        if rule in set_threads:
            return min(int(set_threads[rule]), cores)
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        m = re.search(rf"^rule {rule}:\n(?:    .*\n|\s*\n)*?    threads: (\d+)", smk.read_text(), re.M)
        if m:
            return min(int(m.group(1)), cores)
    sys.exit(f"no `threads:` found for rule {rule} in workflow/rules/")


def _timed(fn, batches, device) -> float:
    import torch

    fn(batches[0][: max(1, len(batches[0]) // 4)])  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bare_passes(args, threads: int) -> dict:
    """Items per second of a bare ResNet-50 forward (mining settings) and a bare ViT-B/32 encode_image."""
    import torch

    from polypsi.config import load_config
    from polypsi.embedding import load_embedder
    from polypsi.runtime import resolve_device

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_model import build

    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    out = {"device": str(device), "threads": threads}
    gen = torch.Generator().manual_seed(0)

    bs, fmt = base["mining"]["batch_size"], base["mining"].get("channels_last", True)
    model = build(args.channels).eval().to(device)
    if fmt:
        model = model.to(memory_format=torch.channels_last)
    n = min(args.images, args.bare_items)
    batches = [torch.rand(min(bs, n - i), 3, 224, 224, generator=gen) for i in range(0, n, bs)]

    def forward(x):
        x = x.to(device)
        with torch.no_grad():
            model(x.contiguous(memory_format=torch.channels_last) if fmt else x)

    out["forward_per_s"] = n / _timed(forward, batches, device)
    model = None  # freed before the embedder loads (forward is done with it)

    cfg = load_config({"embedder": {"name": "ViT-B-32", "pretrained": None}, "device": args.device})
    emb = load_embedder(cfg.embedder, cfg, device)
    ebs = base["embedder"]["batch_size"]
    n = args.bare_items
    crops = [torch.rand(min(ebs, n - i), 3, emb.image_size, emb.image_size, generator=gen) for i in range(0, n, ebs)]
    out["encode_per_s"] = n / _timed(emb.encode_images, crops, device)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=500, help="generated images (the paper: 10,000)")
    ap.add_argument("--channels", type=int, default=None, help="the first C channels of each layer (default all)")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--image-shards", type=int, default=None, help="shards.images (default: config.yaml's, capped)")
    ap.add_argument("--channel-shards", type=int, default=None, help="shards.channels (default: config.yaml's)")
    ap.add_argument("--draw-shards", type=int, default=None, help="shards.draws (default: config.yaml's)")
    ap.add_argument("--profile", default=None,
                    help="a Snakemake profile for the workflow, e.g. profiles/workstation (its GPU jobs at once and "
                         "threads; --cores still applies)")
    ap.add_argument("--bare-items", type=int, default=512, help="images / crops of each bare pass (throughput)")
    ap.add_argument("--reuse-geometry", action="store_true",
                    help="keep the layer geometry of an earlier run in --workdir (same model; the probe runs on the CPU "
                         "and costs minutes there); its time is then that earlier run's")
    ap.add_argument("--workdir", default=str(ROOT / ".bench"), help="where the workflow runs (results/bench/)")
    args = ap.parse_args(argv)
    if args.channels == 0:
        args.channels = None
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))

    print(f"workload: {args.images} images at 224 px, ResNet-50 layer3+layer4 "
          f"({args.channels or 'all'} channels each), ViT-B/32, K=50, M=20, random weights; "
          f"--cores {args.cores}, device {args.device}; workflow in {work}", flush=True)
    threads = rule_threads("mine_topk", args.cores, args.profile)
    before = bare_passes(args, threads)
    wall = run_workflow(args, work)
    jobs = jobs_table(work)
    reused = jobs[(jobs["rule"] == "geometry") & (jobs["stage_end"] < time.time() - wall)]
    if len(reused):
        print(f"geometry reused from an earlier run ({reused['job_s'].sum():.0f} s then): not in this run's wall time",
              flush=True)
        jobs = jobs.drop(reused.index)
    if int(jobs.loc[jobs["rule"] == "mine_topk", "threads"].max()) != threads:
        sys.exit(f"mine_topk ran with other threads than {threads} (workflow/rules/mining.smk): fix rule_threads")
    after = bare_passes(args, threads)
    bare = {**after, **{k: (before[k] + after[k]) / 2 for k in ("forward_per_s", "encode_per_s")}}
    embedded, distinct = crop_counts(work)

    g = jobs.groupby("rule")
    per = pd.DataFrame({"jobs": g.size(), "wall_s": g["job_s"].sum(), "startup_s": g["startup_s"].sum(),
                        "stage_s": g["stage_s"].sum(), "forward_s": g["forward_s"].sum(),
                        "peak_mb": g["peak_rss_mb"].max(), "torch": g["torch_imported"].any()})
    per["fwd_share"] = per["forward_s"] / per["stage_s"]
    per["vs_bare"] = np.nan
    mining_ratio = embed_ratio = float("nan")
    if "mine_topk" in per.index:
        mining_ratio = (args.images / per.at["mine_topk", "stage_s"]) / bare["forward_per_s"]
        per.at["mine_topk", "vs_bare"] = mining_ratio
    if "embed_patches" in per.index:
        embed_ratio = (distinct / per.at["embed_patches", "stage_s"]) / bare["encode_per_s"]
        per.at["embed_patches", "vs_bare"] = embed_ratio
    order = jobs.groupby("rule")["process_start"].min().sort_values().index
    per = per.loc[order]
    forward_share = jobs["forward_s"].sum() / wall

    pd.set_option("display.width", 160)
    print(f"\nbare passes ({bare['device']}, {bare['threads']} threads), before / after the workflow / mean: "
          f"ResNet-50 forward {before['forward_per_s']:.2f} / {after['forward_per_s']:.2f} / "
          f"{bare['forward_per_s']:.2f} img/s, ViT-B/32 encode_image {before['encode_per_s']:.2f} / "
          f"{after['encode_per_s']:.2f} / {bare['encode_per_s']:.2f} crops/s")
    print(f"workflow wall time {wall:.1f} s ({len(jobs)} jobs); job wall times summed {jobs['job_s'].sum():.1f} s, "
          f"of which start-up {jobs['startup_s'].sum():.1f} s; forward passes {jobs['forward_s'].sum():.1f} s\n")
    print(per.to_string(float_format=lambda x: f"{x:.2f}"))
    print(f"\nmine_topk: {args.images} images; embed_patches: {embedded} crops embedded for {distinct} distinct "
          f"crops (patches: {int(jobs.loc[jobs.rule == 'embed_patches', 'forward_items'].sum())} encoded rows "
          "incl. batch padding)")
    print(f"forward_share={forward_share:.3f} mining_ratio={mining_ratio:.3f} embed_ratio={embed_ratio:.3f} "
          f"crops_embedded={embedded} distinct_crops={distinct}")


if __name__ == "__main__":
    main()
