"""The longest chain of jobs in a run's plan, from per-rule durations: what bounds the run's wall time.

    python benchmarks/critical_path.py                          # the one-GPU estimates of docs/performance.md
    python benchmarks/critical_path.py --estimates my.yaml --configfile config/one_gpu.yaml --gpus 3

Plans the run with a dry run of every job (`snakemake -n --forceall`, nothing runs; the config's data and
weights need not exist) and links each job to the jobs that write its inputs. Every job takes the
duration --estimates gives its rule (seconds from process start to end, start-up included): a low and
a high value, for all layers or per layer. Each job then starts as soon as the jobs it needs have ended
(no limit on cores or GPU slots), which gives the run's shortest possible wall time and the chain of
jobs that sets it; the jobs that want the GPU at once on that schedule are counted against --gpus, so
that a chain that would wait for a slot shows. Printed for the low and the high durations: the chain,
job by job, and its length.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def plan(configfiles: list[str], cores: int) -> list[dict]:
    """Every job of the run: rule, wildcards, inputs, outputs, whether it wants the GPU."""
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", str(cores), "--snakefile",
               str(ROOT / "Snakefile"), "--directory", work, "--resources", "gpu=1"]
        for f in configfiles:
            cmd += ["--configfile", str(Path(f).resolve())]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"the dry run failed:\n{out.stderr[-3000:]}")
    jobs, job = [], None
    for line in out.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            job = {"rule": line.split()[-1].rstrip(":"), "input": [], "output": [], "wildcards": {}, "gpu": False}
            jobs.append(job)
        elif job is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("input", "output"):
                job[key] = [f.strip() for f in value.split(",") if f.strip()]
            elif key == "wildcards":
                job["wildcards"] = dict(kv.split("=", 1) for kv in value.split(", "))
            elif key == "resources":
                job["gpu"] = bool(re.search(r"\bgpu=[1-9]", value))
        elif not line.strip():
            job = None
    return [j for j in jobs if j["rule"] != "all"]


def duration(estimates: dict, job: dict, end: int) -> float:
    """The job's duration from the estimates: [low, high] for the rule, or {layer: [low, high]}."""
    rule = job["rule"]
    if rule not in estimates:
        sys.exit(f"no estimate for rule {rule!r} in the estimates file: add `{rule}: [low, high]` (seconds)")
    e = estimates[rule]
    if isinstance(e, dict):
        layer = job["wildcards"].get("layer")
        if layer not in e:
            sys.exit(f"the estimate of rule {rule!r} is per layer but has none for {layer!r}")
        e = e[layer]
    return float(e[end])


def critical_path(jobs: list[dict], estimates: dict, end: int) -> tuple[float, list[tuple[dict, float, float]], int]:
    """(length, [(job, start, finish) of the chain], most GPU jobs at once) with every job as early as it can."""
    writer = {f: i for i, j in enumerate(jobs) for f in j["output"]}
    needs = [sorted({writer[f] for f in j["input"] if f in writer}) for j in jobs]
    finish: dict[int, float] = {}
    start: dict[int, float] = {}
    via: dict[int, int | None] = {}

    def visit(i: int) -> float:  # the DAG is shallow (tens of levels): recursion is fine
        if i not in finish:
            before = [(visit(k), k) for k in needs[i]]
            start[i], via[i] = max(before, default=(0.0, None))
            finish[i] = start[i] + duration(estimates, jobs[i], end)
        return finish[i]

    last = max(range(len(jobs)), key=visit)
    chain, i = [], last
    while i is not None:
        chain.append((jobs[i], start[i], finish[i]))
        i = via[i]
    gpu = [(start[i], finish[i]) for i in range(len(jobs)) if jobs[i]["gpu"] and finish[i] > start[i]]
    most = max((sum(s <= t < f for s, f in gpu) for t, _ in gpu), default=0)
    return finish[last], chain[::-1], most


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--estimates", default=str(ROOT / "benchmarks" / "one_gpu_estimates.yaml"),
                    help="YAML: rule -> [low, high] seconds, or rule -> {layer: [low, high]}")
    ap.add_argument("--configfile", nargs="*", default=[str(ROOT / "config" / "one_gpu.yaml")],
                    help="config overlays merged over config/config.yaml, as for snakemake")
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--gpus", type=int, default=3, help="GPU slots (the resource gpu) of the run, e.g. 3 on profiles/workstation")
    args = ap.parse_args(argv)
    estimates = yaml.safe_load(Path(args.estimates).read_text())
    jobs = plan(args.configfile, args.cores)
    print(f"{len(jobs)} jobs ({sum(j['gpu'] for j in jobs)} want the GPU); durations from {args.estimates}")
    for end, name in ((0, "low"), (1, "high")):
        total, chain, most = critical_path(jobs, estimates, end)
        print(f"\n{name} durations: the longest chain, {total:.0f} s ({total / 60:.1f} min):")
        for job, s, f in chain:
            wild = ", ".join(f"{k}={v}" for k, v in job["wildcards"].items())
            print(f"  {s:6.0f} - {f:4.0f} s  {job['rule']}{f' ({wild})' if wild else ''}{'  [GPU]' if job['gpu'] else ''}")
        slots = ("within the" if most <= args.gpus else "more than the")
        print(f"  at most {most} GPU jobs at once on this schedule: {slots} {args.gpus} slots")


if __name__ == "__main__":
    main()
