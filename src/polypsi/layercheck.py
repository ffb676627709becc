"""Layer names checked when the workflow is planned, before any job runs.

Listing a model's module names means building it (without weights), which costs seconds; the
list is kept in a small cache keyed by the model's settings and the code of its source, so
later plans (and every cluster job, which re-plans) read a file instead.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from . import sources
from .codehash import closure, module_file
from .config import Config
from .errors import ConfigError, ModelLoadError


def cache_dir() -> Path:
    """Where module lists are kept: $POLYPSI_CACHE, else $XDG_CACHE_HOME/polypsi, else ~/.cache/polypsi.

    Shared by every run folder: a list depends only on the model's settings and its source's code.
    """
    if os.environ.get("POLYPSI_CACHE"):
        return Path(os.environ["POLYPSI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polypsi"


def _key(cfg: Config) -> str:
    src = sources.get("model", cfg.model.source)
    h = hashlib.sha1()
    settings = {"model": cfg.model.model_dump(mode="json", exclude={"layers", "weights", "checkpoint"})}
    for section in src.sections:
        settings[section] = getattr(cfg, section.split(".")[0]).model_dump(mode="json")
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name in closure(list(src.modules)):
        h.update(module_file(name).read_bytes())
    if cfg.model.source == "python" and cfg.model.entry:
        where = cfg.model.entry.rpartition(":")[0]
        if Path(where).is_file():  # your own file: editing it re-lists its modules
            h.update(Path(where).read_bytes())
    return h.hexdigest()[:16]


def module_names(cfg: Config, cache_dir: str | Path | None = None) -> list[str]:
    """Every module name of the run's model (built without weights; cached under cache_dir)."""
    path = Path(cache_dir) / f"modules-{_key(cfg)}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    bare = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": None, "checkpoint": None,
                                                                        "layers": []})})
    # the source's builder imports torch and the model's code: only when the cache misses
    names = [n for n, _ in sources.get("model", cfg.model.source).load()(bare).named_modules()]
    if path is not None:  # written whole or not at all (the workflow's writers live in polypsi.io, too heavy here)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".modules.", suffix=".part")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(names))
        os.replace(tmp, path)
    return names


def check_layers_and_crops(cfg: Config, cache_dir: str | Path | None = None) -> None:
    """Unknown layer names first (with close names), then layers without a crop size."""
    check_names(module_names(cfg, cache_dir), cfg.model.layers)
    check_crop_sizes(cfg)


def check_names(names: list[str], layers: list[str]) -> None:
    """Every analysed layer is one of the model's module names; suggest close ones."""
    known = set(names)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f"; close names: {close}" if close else ""
            raise ModelLoadError(f"model.layers: '{layer}' is not a module of the model{hint}")


def check_crop_sizes(cfg: Config) -> None:
    if cfg.crops.size_rule == "fixed":
        missing = [l for l in cfg.model.layers if l not in cfg.crops.size]
        if missing:
            raise ConfigError(
                f"crops.size has no entry for layer(s) {missing}; add e.g. `crops: {{size: {{{missing[0]}: 96}}}}` "
                "(a side in input pixels), or use crops.size_rule: erf"
            )
