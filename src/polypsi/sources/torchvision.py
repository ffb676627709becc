"""The `torchvision` model source: an architecture by builder name, with a weights enum or a local checkpoint.

Weights that are not in torch's hub cache are downloaded only with a short timeout; the error
names the file to place and where.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..errors import ModelLoadError
from ..models import load_weights


def _weights_enum(name: str, weights_name: str):
    import torchvision  # lazy: a second to import; only torchvision sources need it

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError as e:
        raise ModelLoadError(f"model.name '{name}' is not a torchvision model: {e}") from None
    try:
        return enum, enum[weights_name]
    except KeyError:
        options = ", ".join(m.name for m in enum)
        raise ModelLoadError(f"model.weights '{weights_name}' is not one of {enum.__name__}: {options}") from None


def _torchvision_state_dict(name: str, weights_name: str) -> dict:
    enum, weights = _weights_enum(name, weights_name)
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


def build_torchvision(cfg: Config) -> nn.Module:
    """The registry's `torchvision` model source: an architecture by name, with an enum's weights or a checkpoint."""
    import torchvision  # lazy: a second to import; only torchvision sources need it

    m = cfg.model
    torch.manual_seed(m.init_seed)  # random init is reproducible when no weights are given
    try:
        model = torchvision.models.get_model(m.name, weights=None, **m.kwargs)
    except ValueError as e:
        raise ModelLoadError(f"model.name '{m.name}' is not a torchvision model: {e}") from None
    what = f"torchvision '{m.name}'"
    if m.checkpoint:
        load_weights(model, m.checkpoint, what)
    elif m.weights:
        sd = _torchvision_state_dict(m.name, m.weights)
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise ModelLoadError(f"weights {m.weights} do not fit {what}: {str(e)[:500]}") from None
        t = _weights_enum(m.name, m.weights)[1].transforms()
        model.polypsi_preprocessing = {"input_size": int(t.crop_size[0]), "mean": list(t.mean), "std": list(t.std)}
    if isinstance(getattr(model, "image_size", None), int):  # vision transformers take one input size
        model.polypsi_preprocessing = {**getattr(model, "polypsi_preprocessing", {}), "input_size": model.image_size}
    return model


