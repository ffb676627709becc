"""The `timm` model source: a PyTorch Image Models architecture by name.

`model.name` is a timm architecture (`vit_tiny_patch16_224`, `resnet18`, ...); `model.weights`
is null (random init, seeded), `default` (the architecture's default pretrained tag) or a
pretrained tag (`augreg_in21k`); `model.checkpoint` loads a local state_dict instead;
`model.kwargs` go to `timm.create_model`. Pretrained weights come from the local caches
(Hugging Face hub, torch hub) when they are there; otherwise a download is tried only when the
host can be reached, and the error names the file to place and where.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..errors import ModelLoadError
from ..models import host_resolves, load_weights

HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _cached_file(pcfg) -> tuple[str | None, str]:
    """(a local file of the pretrained weights or None, where they would come from)."""
    if pcfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache  # lazy: only for hub-hosted weights

        names = [pcfg.hf_hub_filename] if pcfg.hf_hub_filename else list(HF_FILES)
        for f in names:
            got = try_to_load_from_cache(pcfg.hf_hub_id, f)
            if isinstance(got, str) and os.path.isfile(got):
                return got, ""
        return None, f"{pcfg.hf_hub_id}/{names[0]} (Hugging Face cache: {constants.HF_HUB_CACHE})"
    if pcfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(pcfg.url).name
        return (str(cached) if cached.is_file() else None), f"{pcfg.url} -> {cached}"
    return None, "nowhere (timm names no source for these weights)"


def build_timm(cfg: Config) -> nn.Module:
    """The registry's `timm` model source."""
    import timm  # lazy: a second or two to import; only timm sources need it
    from timm.models import get_pretrained_cfg, split_model_name_tag  # lazy: as above

    m = cfg.model
    arch, tag = split_model_name_tag(m.name)
    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise ModelLoadError(f"model.name '{arch}' is not a timm architecture" + (f"; close names: {close}" if close else ""))
    torch.manual_seed(m.init_seed)  # random init is reproducible when no weights are given
    if m.checkpoint or not m.weights:
        model = timm.create_model(arch, pretrained=False, **m.kwargs)
        if m.checkpoint:
            load_weights(model, m.checkpoint, f"timm '{arch}'")
        return _with_preprocessing(model)
    if m.weights != "default":
        tag = m.weights
    full = f"{arch}.{tag}" if tag else arch
    try:
        pcfg = get_pretrained_cfg(full)
    except RuntimeError:  # timm's answer to a tag its architecture does not have
        pcfg = None
    if pcfg is None:
        raise ModelLoadError(f"model.weights '{tag}' is not a timm pretrained tag of '{arch}'; "
                             f"known: {timm.list_pretrained(f'{arch}.*')[:10]}")
    local, where = _cached_file(pcfg)
    if local is None:
        host = (pcfg.url.split("/")[2] if pcfg.url and "://" in pcfg.url else "huggingface.co")
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not host_resolves(host):
            raise ModelLoadError(
                f"timm weights {full} are not on this machine and {host} cannot be reached. Fetch {where} on a "
                "connected machine and put it in that cache, or set model.checkpoint to the file's path."
            )
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # fail in seconds on a closed network, not after minutes
    try:
        overlay = {"file": local} if local else None
        model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay=overlay, **m.kwargs)
    except Exception as e:  # a failed download or an unreadable file ends the same way: what to do
        raise ModelLoadError(f"could not load timm weights {full} ({type(e).__name__}: {e}). Fetch {where} by "
                             "hand, or set model.checkpoint to a local state_dict file.") from None
    finally:
        socket.setdefaulttimeout(old)
    return _with_preprocessing(model)


def _with_preprocessing(model: nn.Module) -> nn.Module:
    from timm.data import resolve_model_data_config  # lazy: as above

    d = resolve_model_data_config(model)
    size = int(d["input_size"][-1])
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(img, (tuple, list)) and img and img[0]:  # a ViT built for another size takes only that one
        size = int(img[0])
    model.polypsi_preprocessing = {"input_size": size, "mean": list(d["mean"]), "std": list(d["std"])}
    return model
