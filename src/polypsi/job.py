"""One job object for every stage, from Snakemake or from a notebook.

A stage is a function `stage(job: Job) -> None`. Snakemake's scripts call
`run(snakemake, stage)`; a notebook builds the same object with `Job(...)` or, for a rule of the
workflow, with `mock_job(rule, configfile, **wildcards)`, which asks Snakemake for the rule's
inputs, outputs and params without running anything.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import Config, config_for_rule
from .errors import PolypsiError
from .runtime import FORWARD, PROFILE_ENV, get_logger, resolve_device


class Files:
    """A rule's named files: `files.psi` is a path or a list of paths (expanded over layers or shards)."""

    def __init__(self, **named: str | list[str]):
        self._named = {k: (str(v) if isinstance(v, (str, os.PathLike)) else [str(x) for x in v]) for k, v in named.items()}

    def __getattr__(self, name: str):
        try:
            return self._named[name]
        except KeyError:
            raise AttributeError(f"no file named {name!r}; this job has {sorted(self._named)}") from None

    def __getitem__(self, name: str):
        return self._named[name]

    def __contains__(self, name: str) -> bool:
        return name in self._named

    def items(self):
        return self._named.items()

    def paths(self) -> Iterator[str]:
        for v in self._named.values():
            yield from ([v] if isinstance(v, str) else v)

    def __repr__(self) -> str:
        return f"Files({self._named!r})"

    @classmethod
    def of(cls, namedlist) -> "Files":
        """From Snakemake's input/output/log lists (every entry a rule passes is named)."""
        named = dict(namedlist.items())
        unnamed = len(list(namedlist)) - sum(1 if isinstance(v, str) else len(v) for v in named.values())
        if unnamed:
            raise PolypsiError(f"a rule passed {unnamed} unnamed file(s) {list(namedlist)}; name every input and output")
        return cls(**named)


@dataclass
class Job:
    """What a stage reads and writes: the config, files, wildcards, log file and threads."""

    cfg: Config
    input: Files = field(default_factory=Files)
    output: Files = field(default_factory=Files)
    wildcards: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    threads: int = 1
    rule: str = ""

    @property
    def device(self):
        """The torch device of `device:` (auto = CUDA when present)."""
        return resolve_device(self.cfg.device)

    def logger(self, name: str = "polypsi") -> logging.Logger:
        return get_logger(name, self.log)

    def wildcard(self, name: str) -> str:
        try:
            return str(self.wildcards[name])
        except KeyError:
            raise PolypsiError(f"rule {self.rule or '?'} has no wildcard {name!r}; it has {sorted(self.wildcards)}") from None

    @classmethod
    def from_snakemake(cls, smk) -> "Job":
        """The job of a running Snakemake script: settings from `params.config`, runtime keys from the run's config."""
        cfg = config_for_rule(smk.params.config, smk.config)
        log = str(smk.log[0]) if len(smk.log) else None
        return cls(cfg=cfg, input=Files.of(smk.input), output=Files.of(smk.output), wildcards=dict(smk.wildcards.items()),
                   log=log, threads=int(getattr(smk, "threads", 1) or 1), rule=str(getattr(smk, "rule", "")))


def run(smk_or_job, stage: Callable[[Job], Any]) -> None:
    """Run one stage as a workflow job: a user-facing error ends with its message and exit code 1."""
    job = smk_or_job if isinstance(smk_or_job, Job) else Job.from_snakemake(smk_or_job)
    if job.log:
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        open(job.log, "w").close()  # a rerun's log starts empty
    _set_threads(job.threads)
    profiling = bool(os.environ.get(PROFILE_ENV))
    startup = _process_age() if profiling else 0.0
    t0, m0 = time.time(), time.perf_counter()
    try:
        stage(job)
    except (PolypsiError, FileNotFoundError) as e:
        job.logger().error("polypsi error: %s", e)
        sys.exit(1)
    except RuntimeError as e:
        if not _out_of_memory(e):
            raise
        job.logger().error("polypsi error: %s", out_of_memory_message(job, e))
        sys.exit(1)
    if profiling:
        _write_profile(job, t0, startup, time.perf_counter() - m0)


def _out_of_memory(e: BaseException) -> bool:
    """torch's out-of-memory error (CUDA's, or the CPU allocator's), without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, torch.OutOfMemoryError)


# Settings that bound a GPU stage's memory; runtime keys, so changing one reruns nothing.
BATCH_KEYS = ("mining.batch_size", "embedder.batch_size", "neuron_embeddings.batch_size", "interventions.batch_size")


def out_of_memory_message(job: Job, e: BaseException) -> str:
    """What to do when a stage runs out of memory: on a GPU, most often other GPU jobs share it."""
    where = f"rule {job.rule or '?'}" + (f" ({', '.join(f'{k}={v}' for k, v in job.wildcards.items())})"
                                          if job.wildcards else "")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    keys = ", ".join(BATCH_KEYS)
    if "cuda" in first.lower():
        return (f"{where} ran out of GPU memory ({first}). A profile that admits several GPU jobs at once "
                "(profiles/workstation: resources gpu=3) runs them side by side on one GPU: run the same command "
                f"with `--resources gpu=1` to run one at a time, or lower this stage's batch size ({keys}: runtime "
                "settings, results change by float rounding only and no finished job reruns). Finished jobs are "
                "kept; the same command resumes.")
    return (f"{where} ran out of memory ({first}). Run fewer jobs at once (a lower --cores), or lower this stage's "
            f"batch size ({keys}: runtime settings, no finished job reruns); the same command resumes.")


def _process_age() -> float:
    """Seconds since this process started (interpreter and imports so far), on the wall clock, taken now: a clock
    step later in the stage must not change it."""
    try:
        import psutil  # lazy: only when profiling

        return max(0.0, time.time() - psutil.Process().create_time())
    except ImportError:
        return 0.0


def _write_profile(job: Job, t0: float, startup: float, stage_s: float) -> None:
    """This job's timings as JSON in $POLYPSI_PROFILE (benchmarks/bench_pipeline.py): process start-up (interpreter
    and imports), the stage, the time in model forward passes, peak memory, whether torch was imported.

    Durations come from a monotonic clock (the stage) or are taken before the stage (the start-up): the wall
    clock of a virtual machine can step by seconds during a long stage. The wall-clock stamps only order jobs."""
    import json  # lazy: only when profiling

    # VmHWM: this process's peak resident memory (ru_maxrss would keep Snakemake's across fork and exec)
    try:
        peak = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource  # lazy: only when profiling, where /proc is absent

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    wild = "_".join(f"{k}{v}" for k, v in sorted(job.wildcards.items()))
    out = Path(os.environ[PROFILE_ENV]) / f"{job.rule or 'job'}{'_' + wild if wild else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "rule": job.rule, "wildcards": dict(job.wildcards), "threads": job.threads,
        "process_start": t0 - startup, "stage_start": t0, "stage_end": t0 + stage_s, "startup_s": startup,
        "stage_s": stage_s,
        "forward_s": FORWARD["seconds"], "forward_calls": FORWARD["calls"], "forward_items": FORWARD["items"],
        "peak_rss_mb": peak,
        "torch_imported": "torch" in sys.modules, "open_clip_imported": "open_clip" in sys.modules,
    }, indent=1))


# Thread-pool sizes read once by the numerical libraries when they start (OpenMP, MKL, OpenBLAS, numexpr).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _set_threads(n: int) -> None:
    """At most the job's `threads` compute threads, whenever the stage imports torch (or numpy's BLAS).

    Stages import torch lazily, often after this runs: the environment sizes its pools then (torch
    reads OMP_NUM_THREADS when it starts); a torch imported already is set directly. Without this,
    torch starts one thread per core in every job, and parallel jobs oversubscribe the cores.
    """
    n = str(max(1, int(n)))
    for key in THREAD_ENV:
        os.environ[key] = n
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(n))


def mock_job(rule: str, configfile: str | Path | None = None, workdir: str | Path = ".",
             config: dict | None = None, **wildcards: str) -> Job:
    """The job Snakemake would run for `rule` (with these wildcards), for running a stage in a notebook.

    Builds the workflow from the project's Snakefile as Snakemake does, with `configfile` and
    `config` overrides, and fills the job's files and settings from the rule; nothing runs.
    Paths are relative to `workdir` (the folder you would run snakemake in).
    """
    from .workflow_mock import snakemake_job  # lazy: imports Snakemake's internals

    smk = snakemake_job(rule, configfile, workdir, config or {}, wildcards)
    return Job.from_snakemake(smk)
