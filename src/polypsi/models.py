"""Models under study: loading (through the source registry; torchvision's loader lives here) and layer hooks."""

from __future__ import annotations

import difflib
import socket
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from . import sources
from .config import Config
from .errors import ModelLoadError


def _torchvision_state_dict(name: str, weights_name: str) -> dict:
    import torchvision  # lazy: its import costs a second and only torchvision sources need it

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError as e:
        raise ModelLoadError(f"model.name '{name}' is not a torchvision model: {e}") from None
    try:
        weights = enum[weights_name]
    except KeyError:
        options = ", ".join(m.name for m in enum)
        raise ModelLoadError(f"model.weights '{weights_name}' is not one of {enum.__name__}: {options}") from None
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # fail in seconds on a closed network, not after minutes
        try:
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
        except Exception as e:  # any network/hash failure ends the same way: tell the user what to do
            raise ModelLoadError(
                f"could not fetch {enum.__name__}.{weights_name} from {url} ({type(e).__name__}: {e}). "
                f"Place the file at {cached} (or set TORCH_HOME), or set model.checkpoint to a local state_dict file."
            ) from None
        finally:
            socket.setdefaulttimeout(old)
    return torch.load(cached, map_location="cpu", weights_only=True)


def load_state_dict_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file {path} does not exist; fix model.checkpoint / embedder.checkpoint")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable torch checkpoint: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path} does not hold a state_dict (got {type(sd).__name__})")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build_torchvision(cfg: Config) -> nn.Module:
    """The registry's `torchvision` model source: an architecture by name, with an enum's weights or a checkpoint."""
    import torchvision  # lazy: its import costs a second and only torchvision sources need it

    m = cfg.model
    torch.manual_seed(m.init_seed)  # random init is reproducible when no weights are given
    try:
        model = torchvision.models.get_model(m.name, weights=None)
    except ValueError as e:
        raise ModelLoadError(f"model.name '{m.name}' is not a torchvision model: {e}") from None
    if m.checkpoint:
        sd = load_state_dict_file(m.checkpoint)
    elif m.weights:
        sd = _torchvision_state_dict(m.name, m.weights)
    else:
        sd = None
    if sd is not None:
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            src = m.checkpoint or m.weights
            raise ModelLoadError(f"weights {src} do not fit torchvision '{m.name}': {str(e)[:500]}") from None
    return model


def build_model(cfg: Config) -> nn.Module:
    """The model of `model.source` (from the source registry), with the analysed layers checked."""
    model = sources.get("model", cfg.model.source).load()(cfg)
    check_layers(model, cfg.model.layers)
    return model.eval()


def load_model(cfg: Config, device: torch.device | str = "cpu") -> nn.Module:
    model = build_model(cfg).to(device)
    if cfg.mining.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_layers(model: nn.Module, layers: list[str]) -> None:
    names = dict(model.named_modules())
    for layer in layers:
        if layer not in names:
            close = difflib.get_close_matches(layer, list(names), n=3)
            hint = f"; close names: {close}" if close else ""
            raise ModelLoadError(f"model.layers: '{layer}' is not a module of the model{hint}")


class FeatureExtractor:
    """Runs the model once per batch and returns the outputs of every requested layer."""

    def __init__(self, model: nn.Module, layers: list[str], mean, std, precision: str = "fp32"):
        self.model, self.layers, self.precision = model, list(layers), precision
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
        """images: [B,3,S,S] in [0,1]. Returns {layer: float32 [B,C,H,W]}."""
        x = (images.to(self.device) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self._out = {}
        ctx = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else nullcontext()
        )
        with torch.no_grad(), ctx:
            self.model(x)
        missing = [n for n in self.layers if n not in self._out]
        if missing:
            raise RuntimeError(f"layers {missing} produced no output in the forward pass")
        return {n: self._out[n].float().contiguous() for n in self.layers}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
