"""The longest chain of jobs in a run's plan, from per-rule durations: what bounds the run's wall time.

    python benchmarks/critical_path.py                          # the one-GPU estimates of docs/performance.md
    python benchmarks/critical_path.py --estimates my.yaml --configfile config/one_gpu.yaml --gpus 3

Plans the run with a dry run of every job (`snakemake -n --forceall`, nothing runs; the config's data and
weights need not exist) and links each job to the jobs that write its inputs. Every job takes the
duration --estimates gives its rule (seconds from process start to end, start-up included): a low and
a high value, for all layers or per layer. Two schedules, for the low and the high durations:
- unlimited: each job starts as soon as the jobs it needs have ended: the run's shortest possible wall
  time, and the chain of jobs that sets it;
- slots: as Snakemake runs it with --cores and --gpus (the resource gpu): a ready job starts when its
  threads and GPU slot are free, higher rule priority first (then by rule and wildcards); the chain shows where a
  job waited for a slot.
Printed: each schedule's length and chain, job by job. Gaps between jobs (Snakemake polls, under a
second each) and Snakemake's own start (a few seconds) are not counted.
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
               str(ROOT / "Snakefile"), "--directory", work]
        for f in configfiles:
            cmd += ["--configfile", str(Path(f).resolve())]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"the dry run failed:\n{out.stderr[-3000:]}")
    jobs, job = [], None
    for line in out.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            job = {"rule": line.split()[-1].rstrip(":"), "input": [], "output": [], "wildcards": {}, "gpu": False,
                   "threads": 1, "priority": 0}
            jobs.append(job)
        elif job is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("input", "output"):
                job[key] = [f.strip() for f in value.split(",") if f.strip()]
            elif key == "wildcards":
                job["wildcards"] = dict(kv.split("=", 1) for kv in value.split(", "))
            elif key == "resources":
                job["gpu"] = bool(re.search(r"\bgpu=[1-9]", value))
            elif key in ("threads", "priority"):
                job[key] = int(value)
        elif not line.strip():
            job = None
    # Sorted by rule and wildcards: the dry run lists jobs in an order that varies between runs, and the slots'
    # schedule breaks ties in list order, so that it is the same every run.
    return sorted((j for j in jobs if j["rule"] != "all"), key=lambda j: (j["rule"], sorted(j["wildcards"].items())))


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


def schedule(jobs: list[dict], estimates: dict, end: int, cores: int | None = None, gpus: int | None = None):
    """Start and finish of every job: as early as its inputs allow, or (with cores and gpus) also when its threads
    and GPU slot are free, higher priority first. Returns (start, finish, the job each one waited for)."""
    writer = {f: i for i, j in enumerate(jobs) for f in j["output"]}
    needs = [sorted({writer[f] for f in j["input"] if f in writer}) for j in jobs]
    dur = [duration(estimates, j, end) for j in jobs]
    start, finish, after = {}, {}, {}
    t, running, free = 0.0, [], {"cores": cores or 0, "gpu": gpus or 0}
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["priority"])  # stable: list order among equals
    while len(finish) < len(jobs):
        for i in order:
            if i in start or any(k not in finish for k in needs[i]):
                continue
            threads, gpu = min(jobs[i]["threads"], cores or 1), int(jobs[i]["gpu"])
            if cores is not None and (threads > free["cores"] or gpu > free["gpu"]):
                continue
            start[i] = t
            ends = [(finish[k], k) for k in needs[i]]
            after[i] = max(ends, default=(0.0, None))[1]
            if cores is not None:
                free["cores"] -= threads
                free["gpu"] -= gpu
            running.append((t + dur[i], i))
        if not running:
            sys.exit("no job can start: a job needs more threads or GPU slots than --cores / --gpus give")
        running.sort()
        t, i = running.pop(0)
        finish[i] = t
        if cores is not None:
            free["cores"] += min(jobs[i]["threads"], cores)
            free["gpu"] += int(jobs[i]["gpu"])
    return start, finish, after


def chain(jobs, start, finish, after) -> list[tuple[dict, float, float, float]]:
    """The jobs that set the run's end, first to last: (job, start, finish, seconds it waited for a slot)."""
    i, out = max(finish, key=finish.get), []
    while i is not None:
        k = after[i]
        ready = finish[k] if k is not None else 0.0
        out.append((jobs[i], start[i], finish[i], start[i] - ready))
        i = k
    return out[::-1]


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
        for limits, what in (((None, None), "unlimited"), ((args.cores, args.gpus), f"{args.cores} cores, "
                                                                                    f"{args.gpus} GPU slots")):
            start, finish, after = schedule(jobs, estimates, end, *limits)
            total = max(finish.values())
            print(f"\n{name} durations, {what}: {total:.0f} s ({total / 60:.1f} min); the chain that sets it:")
            for job, s, f, waited in chain(jobs, start, finish, after):
                wild = ", ".join(f"{k}={v}" for k, v in job["wildcards"].items())
                print(f"  {s:6.0f} - {f:4.0f} s  {job['rule']}{f' ({wild})' if wild else ''}"
                      f"{'  [GPU]' if job['gpu'] else ''}{f'  (waited {waited:.0f} s for a slot)' if waited > 0 else ''}")

if __name__ == "__main__":
    main()
