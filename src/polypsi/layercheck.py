"""Settings checked against the model when the workflow is planned, before any job runs.

Layer names, channel counts and feature-map sizes need the model built (without weights) and
run once on a blank image, which costs seconds; what that probe finds is kept in a small cache
keyed by the model's settings and the code of its source, so later plans (and every cluster
job, which re-plans) read a file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from . import sources
from .codehash import closure, module_file
from .config import Config
from .errors import StageError
from .modelfit import (check_crop_sizes, check_geometry, check_names, check_shards, crop_size_problems,
                       geometry_problems, name_problems, shard_problems)

# Part of the cache key: bump it when what a probe records changes.
PROBE_VERSION = 2


def cache_dir() -> Path:
    """Where probes are kept: $POLYPSI_CACHE, else $XDG_CACHE_HOME/polypsi, else ~/.cache/polypsi.

    Shared by every run folder: a probe depends only on the model's settings and its source's code.
    """
    if os.environ.get("POLYPSI_CACHE"):
        return Path(os.environ["POLYPSI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polypsi"


def _key(cfg: Config) -> str:
    src = sources.get("model", cfg.model.source)
    h = hashlib.sha1(f"probe{PROBE_VERSION}".encode())
    settings = {"model": cfg.model.model_dump(mode="json", exclude={"layers", "weights", "checkpoint"})}
    for section in src.sections:
        settings[section] = getattr(cfg, section.split(".")[0]).model_dump(mode="json")
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name in closure(list(src.modules)):
        h.update(module_file(name).read_bytes())
    if cfg.model.source == "python" and cfg.model.entry:
        where = cfg.model.entry.rpartition(":")[0]
        if Path(where).is_file():  # your own file: editing it re-probes its modules
            h.update(Path(where).read_bytes())
    return h.hexdigest()[:16]


def probe(cfg: Config, cache_dir: str | Path | None = None) -> dict:
    """The run's model built without weights (cached under cache_dir): what the plan checks against.

    `modules`: every module name; `input_size`: the size the bare model takes (the config's, else
    its own); `shapes`: module name -> [channels, height, width, kind] of its output for one image
    of that size, for every module whose output is a feature map or a square token grid;
    `error`: why the blank image did not run, if it did not (the shape checks then wait for the
    geometry rule).
    """
    path = Path(cache_dir) / f"probe-{_key(cfg)}.json" if cache_dir is not None else None

    def run() -> dict:
        bare = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": None, "checkpoint": None,
                                                                            "layers": []})})
        # the source's builder imports torch and the model's code: only when the cache misses
        model = sources.get("model", cfg.model.source).load()(bare).eval()
        return {"modules": [n for n, _ in model.named_modules()], **_output_shapes(model, cfg)}

    return cached_json(path, run)


def cached_json(path: Path | None, compute) -> dict:
    """The JSON at `path` if it is there, else compute() written there (whole or not at all) and returned.

    The workflow's writers live in polypsi.io, too heavy to import when a plan is made."""
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    found = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(found))
        os.replace(tmp, path)
    return found


def _output_shapes(model, cfg: Config) -> dict:
    import torch  # lazy: only a cache miss runs the model

    from .models import as_grid, prefix_tokens_of, preprocessing  # lazy: torch; the plan imports this module

    size = preprocessing(model, cfg).input_size
    prefix = cfg.model.prefix_tokens if cfg.model.prefix_tokens is not None else prefix_tokens_of(model)
    shapes: dict[str, list] = {}

    def keep(name):
        def hook(_m, _i, out):
            try:
                raw = out[0] if isinstance(out, (tuple, list)) else out
                g = as_grid(out, name, prefix, 1)
            except (StageError, AttributeError, IndexError):  # not an analysable output (logits, a dict, ...)
                shapes.pop(name, None)
                return
            shapes[name] = [int(g.shape[1]), int(g.shape[2]), int(g.shape[3]),
                            "tokens" if raw.dim() == 3 else "feature_map"]
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except Exception as e:  # any model that refuses a blank image: the geometry rule reports it with its own error
        return {"input_size": size, "shapes": {}, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        for h in handles:
            h.remove()
    return {"input_size": size, "shapes": shapes, "error": None}


def module_names(cfg: Config, cache_dir: str | Path | None = None) -> list[str]:
    """Every module name of the run's model (built without weights; cached under cache_dir)."""
    return probe(cfg, cache_dir)["modules"]


def check_layers_and_crops(cfg: Config, cache_dir: str | Path | None = None) -> None:
    """Unknown layer names first (with close names), then crop sizes, channel shards and feature-map sizes."""
    found = probe(cfg, cache_dir)
    check_names(found["modules"], cfg.model.layers)
    check_crop_sizes(cfg)
    shapes = {layer: found["shapes"].get(layer) for layer in cfg.model.layers}
    check_shards(cfg, shapes)
    # Weights may bring their own input size (torchvision's transforms, a timm tag): without
    # model.input_size the bare model's size may not be the run's, and the geometry rule checks instead.
    if cfg.model.input_size is not None or cfg.model.weights is None:
        check_geometry(cfg, found["input_size"], shapes)


def layer_problems(cfg: Config, cache_dir: str | Path | None = None) -> list[str]:
    """Every problem check_layers_and_crops would raise, listed together (for the preflight)."""
    found = probe(cfg, cache_dir)
    known = [layer for layer in cfg.model.layers if layer in set(found["modules"])]  # crop sizes of real layers
    out = name_problems(found["modules"], cfg.model.layers) + crop_size_problems(cfg, known)
    shapes = {layer: found["shapes"].get(layer) for layer in cfg.model.layers}
    out += shard_problems(cfg, shapes)
    if cfg.model.input_size is not None or cfg.model.weights is None:
        out += geometry_problems(cfg, found["input_size"], shapes)
    return out
