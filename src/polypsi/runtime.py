"""Device choice, logging and progress reporting shared by the stages."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def resolve_device(device: str = "auto"):
    """`auto` picks CUDA when present; asking for CUDA on a machine without it is an error, not a fallback."""
    import torch  # lazy: table-only stages log through this module and need no torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA device is available; set `device: auto` or `cpu`")
    return torch.device(device)


# Set to a folder, every workflow job writes its timings there (benchmarks/bench_pipeline.py reads them).
PROFILE_ENV = "POLYPSI_PROFILE"
# Seconds spent in model forward passes (a model's forward, an embedder's encode_image) by this process.
FORWARD = {"seconds": 0.0, "calls": 0, "items": 0}


@contextmanager
def forward_pass(device, items: int):
    """Count the time of one forward pass in FORWARD (waiting for the GPU to finish when profiling)."""
    sync = os.environ.get(PROFILE_ENV) and getattr(device, "type", str(device)) == "cuda"
    if sync:
        import torch  # lazy: only profiled CUDA runs wait for the device

        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if sync:
            torch.cuda.synchronize(device)
        FORWARD["seconds"] += time.perf_counter() - t0
        FORWARD["calls"] += 1
        FORWARD["items"] += int(items)


def get_logger(name: str = "polypsi", log_file: str | None = None) -> logging.Logger:
    """A logger writing to stderr and, when given, to the rule's log file."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not logger.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        logger.addHandler(h)
    if log_file and not any(getattr(h, "baseFilename", None) == str(log_file) for h in logger.handlers):
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class Progress:
    """Progress lines for long loops, readable in a log file (no carriage-return bars)."""

    def __init__(self, total: int, what: str, logger: logging.Logger | None = None, every_s: float = 10.0):
        self.total, self.what, self.every = max(int(total), 1), what, every_s
        self.log = logger or get_logger()
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info(
                "%s: %d/%d (%.0f%%), %.1f/s, eta %.0fs",
                self.what, self.done, self.total, 100 * self.done / self.total, rate, eta,
            )


@contextmanager
def built_ahead(build: Callable[..., T], items: Iterable, workers: int) -> Iterator[Iterator[T]]:
    """An iterator over build(item) for each item, in order.

    With `workers` > 0, a pool of that many threads builds up to workers + 1 items ahead, starting on entry
    (so that work the caller does before its first item overlaps them too): e.g. decoding images and cutting
    crops while the caller's thread runs the model on the previous batch. Threads, not processes: decoding,
    resizing and torch operations run without Python's lock. Leaving the block early cancels what was not
    started. With `workers` = 0 each item is built when it is asked for, in the caller's thread.
    """
    items = list(items)
    if workers <= 0:
        yield (build(i) for i in items)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    queue = deque(pool.submit(build, i) for i in items[: workers + 1])

    def results() -> Iterator[T]:
        for j in range(len(items)):
            done = queue.popleft()
            if j + workers + 1 < len(items):
                queue.append(pool.submit(build, items[j + workers + 1]))
            yield done.result()

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def builder_threads(device, threads: int) -> int:
    """Threads that build a model's inputs ahead of it (built_ahead): all of the job's on a GPU (the model
    needs none of them), one on a CPU (the model uses the job's threads; one builder still hides most of the
    image reading: 1-2% faster than building in between batches, measured with ViT-B/32 on 2 cores)."""
    return max(1, threads) if getattr(device, "type", str(device)).startswith("cuda") else 1
