"""Device choice, logging and progress reporting shared by the stages."""

from __future__ import annotations

import logging
import sys
import time

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA on a machine without it is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available; set `device: auto` or `cpu`")
    return torch.device(device)


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


class StageError(RuntimeError):
    """An expected failure with a message for the user (bad input, missing file or weights)."""


def stage(smk):
    """(cfg, log_file, params) for a Snakemake script.

    cfg holds the config sections the rule declared in `params:` (others keep their defaults) plus
    the runtime settings (device, batch sizes), which come from the run's full config.
    """
    from .config import Config, from_sections, with_runtime

    params = dict(smk.params.items())
    cfg = from_sections({k: v for k, v in params.items() if k in Config.model_fields})
    cfg = with_runtime(cfg, Config.model_validate(dict(smk.config)))
    log_file = str(smk.log[0]) if len(smk.log) else None
    if log_file:
        import os

        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        open(log_file, "w").close()  # a rerun's log starts empty
    torch.set_num_threads(max(1, int(getattr(smk, "threads", 1) or 1)))
    return cfg, log_file, params


def run_stage(fn, log_file: str | None = None) -> None:
    """Run a stage; known user-facing failures end with their message (no traceback) and exit code 1."""
    from .config import ConfigError
    from .data import DatasetError
    from .embedding import EmbedderLoadError
    from .models import ModelLoadError

    try:
        fn()
    except (ConfigError, DatasetError, ModelLoadError, EmbedderLoadError, StageError, FileNotFoundError) as e:
        msg = f"polypsi error: {e}"
        get_logger("polypsi", log_file).error(msg)
        sys.exit(1)
