"""Settings that must fit the model: layer names, crop sizes, channel shards, feature-map sizes.

Pure checks (no torch): the workflow runs them when it plans (polypsi.layercheck, against a
cached probe of the model) and the stages that see the real model run them again. Each
`*_problems` function lists every problem of its kind (the preflight shows them all at once);
each `check_*` raises them together.
"""

from __future__ import annotations

import difflib

from .config import Config
from .errors import ConfigError, ModelLoadError


def _raise(kind: type[Exception], problems: list[str]) -> None:
    if problems:
        raise kind("\n".join(problems))


def name_problems(names: list[str], layers: list[str]) -> list[str]:
    """Analysed layers that are not module names of the model, with close names."""
    known, out = set(names), []
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f"; close names: {close}" if close else ""
            out.append(f"model.layers: '{layer}' is not a module of the model{hint}")
    return out


def check_names(names: list[str], layers: list[str]) -> None:
    """Every analysed layer is one of the model's module names; suggest close ones."""
    _raise(ModelLoadError, name_problems(names, layers))


def crop_size_problems(cfg: Config, layers: list[str] | None = None) -> list[str]:
    """Layers (default: model.layers) without a crop size when sizes are fixed."""
    if cfg.crops.size_rule == "fixed":
        missing = [l for l in (cfg.model.layers if layers is None else layers) if l not in cfg.crops.size]
        if missing:
            return [
                f"crops.size has no entry for layer(s) {missing}; add e.g. `crops: {{size: {{{missing[0]}: 96}}}}` "
                "(a side in input pixels), or use crops.size_rule: erf"
            ]
    return []


def check_crop_sizes(cfg: Config) -> None:
    _raise(ConfigError, crop_size_problems(cfg))


def shard_problems(cfg: Config, shapes: dict[str, list | None]) -> list[str]:
    """Layers with fewer channels than channel shards (shapes: layer -> [channels, height, width, kind] or None)."""
    n, out = cfg.shards.channels, []
    for layer, shape in shapes.items():
        if shape is not None and n > shape[0]:
            out.append(
                f"shards.channels ({n}) is more than the {shape[0]} channels of layer {layer}: "
                f"{n - shape[0]} channel shard(s) would be empty; set shards.channels to at most {shape[0]}"
            )
    return out


def check_shards(cfg: Config, shapes: dict[str, list | None]) -> None:
    """Every channel shard of every layer has channels."""
    _raise(ConfigError, shard_problems(cfg, shapes))


def check_geometry(cfg: Config, input_size: int, shapes: dict[str, list | None]) -> None:
    """Crops that fit in the input, and feature maps of more than one site (shapes as in check_shards).

    Run when the workflow is planned and again by the geometry rule, which knows the input size
    that weights bring.
    """
    _raise(ConfigError, geometry_problems(cfg, input_size, shapes))


def geometry_problems(cfg: Config, input_size: int, shapes: dict[str, list | None]) -> list[str]:
    """Crops larger than the input and 1 x 1 feature maps, every one of them."""
    out = []
    where = (f"model.input_size ({input_size} px)" if cfg.model.input_size is not None
             else f"the model's own input size ({input_size} px; model.input_size is null)")
    if cfg.crops.size_rule == "fixed":
        for layer in cfg.model.layers:
            side = cfg.crops.size.get(layer)
            if side is not None and side > input_size:
                out.append(
                    f"crops.size.{layer} ({side} px) is larger than the model input, {where}: a crop cannot "
                    f"extend past the image. Set crops.size.{layer} to at most {input_size}, or raise model.input_size"
                )
    for layer, shape in shapes.items():
        if shape is not None and shape[1] * shape[2] == 1:
            grid = "token grid" if shape[3] == "tokens" else "feature map"
            out.append(
                f"{where} gives layer {layer} a 1 x 1 {grid}: its only site sees the whole image, so its crops, "
                "clusters and interventions cannot say where the channel responds. Raise model.input_size "
                "(each site of a map steps by the layer's stride), or analyse an earlier layer"
            )
    return out
