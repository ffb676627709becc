"""Image and text embedders with open_clip's interface, and the embedding stages.

`load_embedder` gives an `Embedder` for the source `embedder.source` names in the source
registry: open_clip (by architecture and pretrained tag, a local checkpoint, or random
weights) is built in here; plug-ins (the planted world) register their own.
Weights that are not on disk fail within seconds with the file to place and where.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from . import sources
from .config import Config, EmbedderConfig
from .crops import cut_crops, resize_crops
from .errors import EmbedderLoadError
from .models import host_resolves
from .runtime import Progress, built_ahead, forward_pass

PACKAGE_DATA = Path(__file__).parent / "data"


class EmbedderParts(NamedTuple):
    """What an embedder source builds: a model with open_clip's encode_image/encode_text, its tokenizer and preprocessing."""

    model: Any
    tokenizer: Any
    image_size: int
    mean: Any
    std: Any


class Embedder:
    """encode_images / encode_texts -> L2-normalised float32 numpy arrays."""

    def __init__(self, model, tokenizer, image_size: int, mean, std, device, precision: str = "auto"):
        self.model, self.tokenizer = model.eval().to(device), tokenizer
        self.image_size, self.device = int(image_size), torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision

    def _ctx(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @staticmethod
    def _norm(z: torch.Tensor) -> np.ndarray:
        z = z.float()
        return torch.nn.functional.normalize(z, dim=-1).cpu().numpy().astype(np.float32)

    def encode_images(self, x: torch.Tensor) -> np.ndarray:
        """x: [B,3,H,W] in [0,1], any size (resized here, as CLIP's preprocessing does)."""
        x = x.to(self.device)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True
            ).clamp_(0, 1)
        x = (x - self.mean).div_(self.std)  # one temporary, not two (the caller's x is left as it was)
        with torch.no_grad(), self._ctx():
            with forward_pass(self.device, len(x)):
                z = self.model.encode_image(x)
            return self._norm(z)

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            with torch.no_grad(), self._ctx():
                with forward_pass(self.device, len(tokens)):
                    z = self.model.encode_text(tokens)
                out.append(self._norm(z))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _register_builtin_archs() -> None:
    import open_clip  # lazy: several seconds to import; only open_clip sources need it

    # Small architectures shipped with polypsi (random weights, for offline runs and tests).
    open_clip.add_model_config(PACKAGE_DATA / "open_clip")


def resolve_open_clip_weights(name: str, tag: str) -> str:
    """A local file for open_clip's (name, tag): the cache if present, else a download, else a clear error."""
    import open_clip  # lazy: several seconds to import; only open_clip sources need it

    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        raise EmbedderLoadError(f"embedder.pretrained '{tag}' is not a known open_clip tag for '{name}'; known: {known}")
    hub, url = pcfg.get("hf_hub", ""), pcfg.get("url", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache  # lazy: only for hub-hosted weights

        repo, fname = os.path.split(hub)  # "org/model/" means open_clip's default file names
        names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for f in names:
            cached = try_to_load_from_cache(repo, f)
            if isinstance(cached, str) and os.path.isfile(cached):
                return cached
        host, where = "huggingface.co", f"{repo}/{names[-1]} (Hugging Face cache: {constants.HF_HUB_CACHE})"
    else:
        host = url.split("/")[2] if "://" in url else ""
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return str(cached)
        where = f"{url} -> {cached}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not host or not host_resolves(host):
        raise EmbedderLoadError(
            f"open_clip weights {name}/{tag} are not on this machine and {host or 'the source'} cannot be reached. "
            f"Fetch {where} on a connected machine, then set embedder.checkpoint to the file's path "
            f"(or put it in that cache)."
        )
    try:
        return open_clip.download_pretrained(pcfg)
    except Exception as e:
        raise EmbedderLoadError(f"downloading open_clip weights {name}/{tag} failed: {e}. "
                                f"Fetch {where} by hand and set embedder.checkpoint.") from None


def build_open_clip(emb: EmbedderConfig, cfg: Config) -> EmbedderParts:
    """The registry's `open_clip` embedder source."""
    import open_clip  # lazy: several seconds to import; only open_clip sources need it

    _register_builtin_archs()
    if emb.name not in open_clip.list_models():
        raise EmbedderLoadError(f"embedder.name '{emb.name}' is not an open_clip architecture")
    if emb.checkpoint:
        if not Path(emb.checkpoint).is_file():
            raise EmbedderLoadError(f"embedder.checkpoint {emb.checkpoint} does not exist")
        pretrained = emb.checkpoint
    elif emb.pretrained:
        pretrained = resolve_open_clip_weights(emb.name, emb.pretrained)
    else:
        pretrained = None
    torch.manual_seed(emb.init_seed)  # random weights are reproducible
    try:
        model, _, _ = open_clip.create_model_and_transforms(emb.name, pretrained=pretrained, device="cpu")
    except Exception as e:
        raise EmbedderLoadError(f"could not build open_clip '{emb.name}' from {pretrained or 'random init'}: {e}") from None
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"] if isinstance(pp["size"], int) else pp["size"][0]
    return EmbedderParts(model, open_clip.get_tokenizer(emb.name), size, pp["mean"], pp["std"])


def load_embedder(emb: EmbedderConfig, cfg: Config, device: torch.device | str = "cpu") -> Embedder:
    """The embedder of `emb.source` (from the source registry) on `device`."""
    parts = sources.get("embedder", emb.source).load()(emb, cfg)
    precision = emb.resolved_precision(cfg.device)  # a workflow rule's is resolved already (params.config)
    return Embedder(parts.model, parts.tokenizer, parts.image_size, parts.mean, parts.std, device, precision)


# ---------------------------------------------------------------- stages


def embed_crops(embedder: Embedder | Callable[[], Embedder], paths: list[str], boxes: np.ndarray, input_size: int,
                batch_size: int, log=None, workers: int = 0) -> np.ndarray:
    """Embeddings [n, d] of the crops boxes[i] of images paths[i] (sorted by image: each is read once).

    Crops are cut in batches (`cut_crops`) and resized in one call per crop side on the embedder's
    device (`resize_crops`). With `workers` > 0, that many threads cut the next batches (up to
    workers + 1 ahead) while this one is encoded, so a GPU does not wait for image decoding.
    `embedder` may be a function that loads the embedder: it is called once the first batches are
    being cut, so that reading images overlaps the model load. A crop's embedding does not depend on
    the sharding: crop shards hold whole batches (`crop_shard`), so each crop is encoded in the same
    batch for any shard count.
    """
    n, bs = len(paths), int(batch_size)
    prog = Progress(n, "crops", log)
    starts = list(range(0, n, bs))

    def cut(i):
        return cut_crops(paths[i : i + bs], boxes[i : i + bs], input_size)

    embs = []
    with built_ahead(cut, starts, workers) as batches:
        if callable(embedder):
            embedder = embedder()
        for i, groups in zip(starts, batches):
            crops = resize_crops(groups, min(bs, n - i), embedder.image_size, embedder.device)
            embs.append(embedder.encode_images(crops))
            prog.update(len(crops))
    return np.concatenate(embs) if embs else np.zeros((0, 1), np.float32)
