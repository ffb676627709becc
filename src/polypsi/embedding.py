"""Image and text embedders with open_clip's interface, and the embedding stages.

`load_embedder` gives an `Embedder` for an open_clip model (by architecture and pretrained
tag, or a local checkpoint, or random weights) or for the planted world's embedder.
Weights that are not on disk fail within seconds with the file to place and where.
"""

from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Config, EmbedderConfig
from .crops import crop_boxes, extract_crops
from .io import read_json, write_table
from .runtime import Progress, get_logger

PACKAGE_DATA = Path(__file__).parent / "data"


class EmbedderLoadError(RuntimeError):
    """Embedder weights could not be had; the message says which file to place where."""


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
        x = (x - self.mean) / self.std
        with torch.no_grad(), self._ctx():
            return self._norm(self.model.encode_image(x))

    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            with torch.no_grad(), self._ctx():
                out.append(self._norm(self.model.encode_text(tokens)))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _register_builtin_archs() -> None:
    import open_clip

    # Small architectures shipped with polypsi (random weights, for offline runs and tests).
    open_clip.add_model_config(PACKAGE_DATA / "open_clip")


def _host_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def resolve_open_clip_weights(name: str, tag: str) -> str:
    """A local file for open_clip's (name, tag): the cache if present, else a download, else a clear error."""
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        raise EmbedderLoadError(f"embedder.pretrained '{tag}' is not a known open_clip tag for '{name}'; known: {known}")
    hub, url = pcfg.get("hf_hub", ""), pcfg.get("url", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

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
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not host or not _host_resolves(host):
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


def load_embedder(emb: EmbedderConfig, cfg: Config, device: torch.device | str = "cpu") -> Embedder:
    if emb.source == "world":
        from .world import build_embedder

        w = build_embedder(cfg.world)
        return Embedder(w, w.tokenizer, w.image_size, w.mean, w.std, device, emb.precision)
    import open_clip

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
    return Embedder(model, open_clip.get_tokenizer(emb.name), size, pp["mean"], pp["std"], device, emb.precision)


# ---------------------------------------------------------------- stages


def embed_patches(cfg: Config, emb_cfg: EmbedderConfig, topk: pd.DataFrame, dataset: pd.DataFrame,
                  geometry: dict, layer: str, channels: np.ndarray, out: str, device,
                  log_file: str | None = None) -> None:
    """CLIP embeddings of the crops of `channels`' top-K sites; a site shared by channels is embedded once."""
    log = get_logger("polypsi.embed", log_file)
    geom, size = geometry["layers"][layer], geometry["input_size"]
    rows = topk[topk["channel"].isin(channels)].reset_index(drop=True)
    sites = rows[["image_id", "u", "v"]].drop_duplicates().sort_values(["image_id", "u", "v"]).reset_index(drop=True)
    log.info("layer %s: %d channels, %d patches, %d distinct crops (side %d px)",
             layer, len(channels), len(rows), len(sites), geom["crop"])
    embedder = load_embedder(emb_cfg, cfg, device)
    paths = dataset.set_index("image_id").loc[sites["image_id"], "path"].tolist()
    boxes = crop_boxes(sites["u"].to_numpy(), sites["v"].to_numpy(), geom, size)
    bs = emb_cfg.batch_size
    embs = []
    prog = Progress(len(sites), "crops", log)
    for i in range(0, len(sites), bs):
        crops = extract_crops(paths[i : i + bs], boxes[i : i + bs], size, embedder.image_size)
        embs.append(embedder.encode_images(crops))
        prog.update(len(crops))
    z = np.concatenate(embs) if embs else np.zeros((0, 1), np.float32)
    site_pos = pd.Series(np.arange(len(sites)), index=pd.MultiIndex.from_frame(sites))
    pos = site_pos.loc[pd.MultiIndex.from_frame(rows[["image_id", "u", "v"]])].to_numpy()
    out_df = rows[["channel", "rank"]].copy()
    write_table(out_df, out, embeddings={"embedding": z[pos]})
    log.info("done")
