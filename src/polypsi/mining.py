"""Exact streaming top-K of every channel of every requested layer, in one pass over the images.

Ties are broken by the site's flat index (image_id, u, v) ascending, so the result is one
well-defined set whatever the batch size or the number of image shards: merging shard
results (`merge_topk`) gives exactly what one pass over all images gives.
Memory is O(channels x K) per layer, independent of the dataset size.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import torch

from .config import Config
from .crops import load_image_uint8
from .errors import StageError
from .io import read_table, write_table
from .models import extractor, load_model
from .runtime import Progress, get_logger
from .shards import shard_rows
from .topk import TOPK_COLUMNS, merge_topk, merge_topk_stage  # noqa: F401  (the merge lives there: no torch)



def _lex_topk(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k entries with the largest value, ties to the smallest index, sorted that way."""
    o = torch.argsort(idx, dim=1, stable=True)
    vals, idx = vals.gather(1, o), idx.gather(1, o)
    o = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]
    return vals.gather(1, o), idx.gather(1, o)


class StreamingTopK:
    """Running top-K over (value, flat site index) pairs of C channels."""

    def __init__(self, channels: int, k: int, device: torch.device | str = "cpu"):
        self.k = k
        self.vals = torch.full((channels, k), -torch.inf, device=device)
        self.idx = torch.full((channels, k), -1, dtype=torch.int64, device=device)

    def update(self, vals: torch.Tensor, idx: torch.Tensor) -> None:
        """vals: [C, N] candidate values; idx: [N] or [C, N] flat site indices."""
        c, n = vals.shape
        if idx.dim() == 1:
            idx = idx.unsqueeze(0).expand(c, n)
        vals = torch.nan_to_num(vals, nan=-torch.inf)
        if n > self.k:
            # Cheap pre-selection; rows whose k-th value is tied beyond k fall back to the exact sort.
            top_v, top_p = torch.topk(vals, self.k, dim=1)
            tied = (vals >= top_v[:, -1:]).sum(1) > self.k
            sel_v, sel_i = top_v, idx.gather(1, top_p)
            if tied.any():
                ex_v, ex_i = _lex_topk(vals[tied], idx[tied], self.k)
                sel_v, sel_i = sel_v.clone(), sel_i.clone()
                sel_v[tied], sel_i[tied] = ex_v, ex_i
            vals, idx = sel_v, sel_i
        self.vals, self.idx = _lex_topk(torch.cat([self.vals, vals], 1), torch.cat([self.idx, idx], 1), self.k)

    def table(self, hw: tuple[int, int]) -> pd.DataFrame:
        """The buffer as a top-K table (rows with no site yet, when fewer than K exist, are left out)."""
        h, w = hw
        vals, idx = self.vals.cpu().numpy(), self.idx.cpu().numpy()
        c, k = vals.shape
        ok = idx >= 0
        ch = np.repeat(np.arange(c), k).reshape(c, k)
        rank = np.tile(np.arange(k), c).reshape(c, k)
        flat = idx[ok]
        return pd.DataFrame({
            "channel": ch[ok].astype(np.int64),
            "rank": rank[ok].astype(np.int64),
            "image_id": flat // (h * w),
            "u": (flat % (h * w)) // w,
            "v": flat % w,
            "activation": vals[ok].astype(np.float32),
        })


def site_candidates(acts: torch.Tensor, image_ids: torch.Tensor, one_site_per_image: bool):
    """Candidate (values [C, N], flat indices) from one batch of activations [B, C, H, W]."""
    b, c, h, w = acts.shape
    base = image_ids.to(acts.device).long() * (h * w)
    flat_acts = acts.reshape(b, c, h * w)
    if one_site_per_image:
        v, pos = flat_acts.max(dim=2)  # first maximum: ties go to the smallest (u, v)
        return v.T.contiguous(), (base.unsqueeze(1) + pos).T.contiguous()
    idx = (base.unsqueeze(1) + torch.arange(h * w, device=acts.device)).reshape(-1)
    return flat_acts.permute(1, 0, 2).reshape(c, b * h * w), idx


class _Images(torch.utils.data.Dataset):
    def __init__(self, df: pd.DataFrame, size: int):
        self.paths, self.ids, self.size = df["path"].tolist(), df["image_id"].to_numpy(), size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):  # uint8: a quarter of the bytes through the loader's shared memory and to the device
        return load_image_uint8(self.paths[i], self.size), int(self.ids[i])


def too_few_images(cfg: Config, n_images: int) -> str | None:
    """Why the run's images cannot give every channel K sites (None when they can).

    With one site per image at most, a channel's top K needs K images; K would silently shrink
    and the K-sensitivity analysis fail later. (The preflight says the same before the run.)
    """
    if cfg.mining.one_site_per_image and n_images < cfg.mining.topk:
        return (f"mining.topk ({cfg.mining.topk}) is more than the {n_images} usable images of the run: with "
                "mining.one_site_per_image each image gives a channel one site at most, so no channel would have "
                f"K sites; set mining.topk to at most {n_images}, add images, or set mining.one_site_per_image: false")
    return None


def mine_shard(cfg: Config, dataset: pd.DataFrame, shard: int, device, workers: int = 0,
               log=None) -> dict[str, pd.DataFrame]:
    """One forward pass per image of this image shard; streaming top-K for every layer; one table per layer."""
    log = log or get_logger("polypsi.mine")
    why = too_few_images(cfg, len(dataset))
    if why:
        raise StageError(why)
    n_shards = cfg.shards.images
    rows = shard_rows(dataset, shard, n_shards, cfg.mining.batch_size)
    model = load_model(cfg, device)
    fx, pre = extractor(model, cfg)
    loader = torch.utils.data.DataLoader(
        _Images(rows, pre.input_size), batch_size=cfg.mining.batch_size, num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",  # page-locked batches: the copy to the GPU need not wait
    )
    log.info("mining shard %d/%d: %d images, layers %s, K=%d, one site per image=%s, %s on %s",
             shard + 1, n_shards, len(rows), cfg.model.layers, cfg.mining.topk,
             cfg.mining.one_site_per_image, cfg.mining.precision, device)
    topk: dict[str, StreamingTopK] = {}
    shapes: dict[str, tuple[int, int]] = {}
    prog = Progress(len(rows), "images", log)
    for images, ids in loader:
        # No padding of the short last batch: shards hold whole batches (shard_rows), so every image is
        # computed in the same batch, of the same size, for any shard count.
        for layer, a in fx(images).items():
            if layer not in topk:
                topk[layer] = StreamingTopK(a.shape[1], cfg.mining.topk, a.device)
                shapes[layer] = tuple(a.shape[2:])
            topk[layer].update(*site_candidates(a, ids, cfg.mining.one_site_per_image))
        prog.update(len(ids))
    fx.close()
    tables = {}
    for layer in cfg.model.layers:
        if layer in topk:
            tables[layer] = topk[layer].table(shapes[layer])
        else:  # an empty shard (more shards than images) still writes its (empty) table
            df = pd.DataFrame({c: pd.Series(dtype="int64") for c in TOPK_COLUMNS})
            df["activation"] = df["activation"].astype(np.float32)
            tables[layer] = df
    return tables


def mine_topk_stage(job) -> None:
    """Rule mine_topk: one image shard, every analysed layer (job.output.tables in layer order)."""
    cfg, log = job.cfg, job.logger("polypsi.mine")
    tables = mine_shard(cfg, read_table(job.input.dataset), int(job.wildcard("shard")), job.device,
                        workers=max(0, job.threads - 1), log=log)
    for layer, path in zip(cfg.model.layers, job.output.tables, strict=True):
        write_table(tables[layer], path)
    log.info("done")
