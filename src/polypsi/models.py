"""Models under study: loading through the source registry, preprocessing, and the outputs of analysed layers.

A layer's output is a feature map [B, C, H, W] (a convolutional layer: channels C, sites on the
H x W grid) or a token sequence [B, N, C] (a transformer block: channels are the C features of
the residual stream, sites are the patch tokens on the grid of the image's patches; class and
register tokens before them are left out). Everything after mining sees [B, C, H, W].
"""

from __future__ import annotations

import math
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import sources
from .config import IMAGENET_MEAN, IMAGENET_STD, Config
from .crops import to_unit
from .errors import ModelLoadError, StageError
from .modelfit import check_names
from .runtime import forward_pass

DEFAULT_INPUT_SIZE = 224


def load_state_dict_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file {path} does not exist; fix model.checkpoint / embedder.checkpoint")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's message suggests weights_only=False: unsafe for a file of unknown origin, and no help
        # for a corrupt one. Keep its first line only.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{path} is not a readable torch checkpoint ({first[:300]}). polypsi loads weights only "
            "(weights_only=True): save a state_dict with torch.save(model.state_dict(), path), or replace a "
            "corrupt or truncated file"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path} does not hold a state_dict (got {type(sd).__name__})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load a local state_dict file into `model`, naming both when they do not fit."""
    sd = load_state_dict_file(path)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ModelLoadError(f"weights {path} do not fit {what}: {str(e)[:500]}") from None


def host_resolves(host: str) -> bool:
    """Whether a download host's name resolves (no network: fail in seconds, not after retries)."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def build_model(cfg: Config) -> nn.Module:
    """The model of `model.source` (from the source registry), with the analysed layers checked."""
    model = sources.get("model", cfg.model.source).load()(cfg)
    check_layers(model, cfg.model.layers)
    return model.eval()


@dataclass(frozen=True)
class Preprocessing:
    """How images enter the model: resized to input_size x input_size, then (x - mean) / std."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def preprocessing(model: nn.Module, cfg: Config) -> Preprocessing:
    """The config's input size and normalisation where set, else what the model declares, else 224 / ImageNet.

    A source (timm's data config) or your own module declares its own as an attribute
    `polypsi_preprocessing = {"input_size": ..., "mean": [...], "std": [...]}`.
    """
    declared = getattr(model, "polypsi_preprocessing", None) or {}
    m = cfg.model
    size = m.input_size or declared.get("input_size") or DEFAULT_INPUT_SIZE
    mean = m.mean or declared.get("mean") or IMAGENET_MEAN
    std = m.std or declared.get("std") or IMAGENET_STD
    return Preprocessing(int(size), tuple(float(x) for x in mean), tuple(float(x) for x in std))


def load_model(cfg: Config, device: torch.device | str = "cpu") -> nn.Module:
    model = build_model(cfg).to(device)
    if cfg.mining.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_layers(model: nn.Module, layers: list[str]) -> None:
    """Every analysed layer is a named module of the model."""
    check_names([n for n, _ in model.named_modules()], layers)


def prefix_tokens_of(model: nn.Module) -> int | None:
    """Tokens before the patch grid, as the model declares them (timm, torchvision), or None."""
    n = getattr(model, "num_prefix_tokens", None)  # timm VisionTransformer and relatives
    if isinstance(n, int):
        return n
    if isinstance(getattr(model, "class_token", None), torch.Tensor):  # torchvision VisionTransformer
        return 1
    return None


def as_grid(out, layer: str, prefix: int | None = None, batch: int | None = None) -> torch.Tensor:
    """A layer's output as a feature map [B, C, H, W]; token sequences [B, N, C] become their patch grid.

    `prefix` tokens (class, registers) are dropped; None takes N minus the largest square.
    With the input's `batch` size, a sequence-first output [N, B, C] (transformers built without
    batch_first) is recognised and transposed.
    """
    if isinstance(out, (tuple, list)):  # blocks that also return attention or state
        out = out[0]
    if out.dim() == 4:
        return out
    if out.dim() != 3:
        raise StageError(f"layer {layer} outputs shape {tuple(out.shape)}; polypsi analyses feature maps "
                         "[B, C, H, W] and token sequences [B, N, C]")
    if batch is not None and out.shape[0] != batch and out.shape[1] == batch:
        out = out.transpose(0, 1)
    b, n, c = out.shape
    p, side = token_grid(n, layer, prefix)
    return out[:, p:, :].transpose(1, 2).reshape(b, c, side, side)


def token_grid(n: int, layer: str, prefix: int | None = None) -> tuple[int, int]:
    """(prefix tokens, grid side) of a sequence of `n` tokens: site (u, v) is token prefix + u * side + v.

    `prefix` None takes n minus the largest square.
    """
    p = n - math.isqrt(n) ** 2 if prefix is None else prefix
    side = math.isqrt(max(n - p, 0))
    if p < 0 or side == 0 or side * side != n - p:
        raise StageError(f"layer {layer} outputs {n} tokens; after {p} prefix token(s) they do not form a square "
                         "patch grid. Set model.prefix_tokens to the number of class/register tokens.")
    return p, side


class FeatureExtractor:
    """Runs the model once per batch and returns the outputs of every requested layer."""

    def __init__(self, model: nn.Module, layers: list[str], mean, std, precision: str = "fp32",
                 prefix_tokens: int | None = None):
        self.model, self.layers, self.precision = model, list(layers), precision
        self.prefix = prefix_tokens if prefix_tokens is not None else prefix_tokens_of(model)
        p = next(model.parameters(), None)
        self.device = p.device if p is not None else torch.device("cpu")
        # Feed channels_last inputs to a model converted by load_model (4-D weights in that layout).
        self.channels_last = any(
            w.dim() == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1 and not w.is_contiguous()
            and w.is_contiguous(memory_format=torch.channels_last)
            for w in model.parameters()
        )
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        modules = dict(model.named_modules())
        self._out: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.layers]

    def _hook(self, name: str):
        def fn(_module, _inp, out):
            self._out[name] = out

        return fn

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: [B,3,S,S] in [0,1] (or uint8 in [0,255], made [0,1] on the device: the same values to the bit).
        Returns {layer: float32 [B,C,H,W]} (token layers as their patch grid)."""
        x = (to_unit(images.to(self.device, non_blocking=True)) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._out = {}
        ctx = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else nullcontext()
        )
        with torch.no_grad(), ctx, forward_pass(self.device, len(x)):
            self.model(x)
        missing = [n for n in self.layers if n not in self._out]
        if missing:
            raise RuntimeError(f"layers {missing} produced no output in the forward pass")
        return {n: as_grid(self._out[n], n, self.prefix, len(x)).float().contiguous() for n in self.layers}

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def extractor(model: nn.Module, cfg: Config, layers: list[str] | None = None,
              precision: str | None = None) -> tuple[FeatureExtractor, Preprocessing]:
    """The feature extractor of `layers` (default: the run's) with the model's preprocessing.

    `precision` defaults to mining.precision."""
    pre = preprocessing(model, cfg)
    fx = FeatureExtractor(model, layers or cfg.model.layers, pre.mean, pre.std, precision or cfg.mining.precision,
                          cfg.model.prefix_tokens)
    return fx, pre
