"""Running the trials: pasting patches into images and measuring the channel at the site.

The runner measures every site once unchanged ("before") and once per trial that could be made
("after"), in batches, with a torch model hooked at the layer or any callable returning the layer's
activations. The change is normalised by the channel's top-1 activation over the dataset (`delta_norm`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..calibration import channels_only
from ..config import InterventionConfig
from ..crops import load_image
from ..models import FeatureExtractor
from ..runtime import Progress, built_ahead
from .plan import max_free_scale, plan, resolve_region_scale, select_channels
from .trial import OK, Box, Site, Trial, trials_table

log = logging.getLogger("polypsi.interventions")

# --------------------------------------------------------------------------- pasting


def _feather(h: int, w: int, px: int) -> torch.Tensor:
    """[1,h,w] alpha rising linearly from the border over `px` pixels (1 inside)."""
    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        d = torch.minimum(i + 1, n - i)  # distance to the nearest edge, 1 at the edge pixel
        return (d / (px + 1)).clamp(max=1.0)

    return torch.minimum(ramp(h)[:, None], ramp(w)[None, :])[None]


def paste(img: torch.Tensor, patch: torch.Tensor, box: Box, blend_px: int = 0) -> torch.Tensor:
    """A copy of `img` [3,S,S] with `patch` [3,h',w'] resized into `box`, hard or feathered."""
    y0, x0, y1, x1 = box
    h, w = y1 - y0, x1 - x0
    if tuple(patch.shape[-2:]) != (h, w):
        patch = F.interpolate(patch[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    out = img.clone()
    if blend_px > 0:
        a = _feather(h, w, blend_px)
        out[:, y0:y1, x0:x1] = a * patch + (1 - a) * img[:, y0:y1, x0:x1]
    else:
        out[:, y0:y1, x0:x1] = patch
    return out


def fill_patch(kind: str, h: int, w: int, mean, seed: int) -> torch.Tensor:
    """The Ablate-elsewhere content: the model's mean colour, zeros, or uniform noise seeded per site."""
    if kind == "mean":
        return torch.tensor(mean, dtype=torch.float32).view(3, 1, 1).expand(3, h, w).clone()
    if kind == "zero":
        return torch.zeros(3, h, w)
    if kind == "noise":
        return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"interventions.fill '{kind}' is not one of mean, zero, noise")


# --------------------------------------------------------------------------- forward passes


def trial_image(t: Trial, image: Callable[[int], torch.Tensor], mean, blend_px: int) -> torch.Tensor:
    """A trial's input: its site's image with the donor's patch (or a fill) pasted over the trial's region."""
    y0, x0, y1, x1 = t.region
    if t.fill:
        patch = fill_patch(t.fill, y1 - y0, x1 - x0, mean, t.noise_seed)
    else:
        dy0, dx0, dy1, dx1 = t.donor.box
        patch = image(t.donor.image_id)[:, dy0:dy1, dx0:dx1]
    return paste(image(t.site.image_id), patch, t.region, blend_px)


def _as_extractor(model_or_extractor, layer: str, mean, std) -> Callable[[torch.Tensor], dict]:
    if isinstance(model_or_extractor, torch.nn.Module):
        return FeatureExtractor(model_or_extractor, [layer], mean, std)
    if callable(model_or_extractor):
        return model_or_extractor
    raise TypeError(f"expected a torch model or a feature extractor, got {type(model_or_extractor).__name__}")


def layer_batches(extract, layer: str, items: list, build: Callable, device, batch_size: int, workers: int = 0):
    """(batch, the layer's activations [B,C,H,W]) for each batch of `items`, the images build(item) stacked.

    With `workers` > 0, that many threads build the next batches while the model runs (runtime.built_ahead).
    """
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    with built_ahead(lambda batch: torch.stack([build(item) for item in batch]), batches, workers) as images:
        for batch, x in zip(batches, images):
            with torch.no_grad():
                acts = extract(x.to(device))[layer]
            yield batch, acts


def _site_activations(extract, layer: str, jobs: list, device, batch_size: int, progress,
                      workers: int = 0) -> list[float]:
    """Activation of each job's (channel, u, v) on the image its builder makes, in batches (`layer_batches`).

    A job is (channel, u, v, make): `make()` builds the image [3,S,S].
    """
    out: list[float] = []
    for batch, acts in layer_batches(extract, layer, jobs, lambda job: job[3](), device, batch_size, workers):
        dev = acts.device
        idx = torch.arange(len(batch), device=dev)
        ch = torch.tensor([c for c, _, _, _ in batch], device=dev)
        uu = torch.tensor([u for _, u, _, _ in batch], device=dev)
        vv = torch.tensor([v for _, _, v, _ in batch], device=dev)
        out += acts[idx, ch, uu, vv].float().cpu().tolist()
        progress.update(len(batch))
    return out


# --------------------------------------------------------------------------- trials


def run_interventions(model_or_extractor, layer: str, psi: pd.DataFrame, patches: pd.DataFrame,
                      dataset: pd.DataFrame, geometry: dict, cfg: InterventionConfig, device, input_size: int,
                      mean, std, logger: logging.Logger | None = None, workers: int = 0) -> pd.DataFrame:
    """Run every trial; one row per (channel, site, condition) with activations before and after.

    `model_or_extractor`: a torch model (hooked with polypsi.models.FeatureExtractor here) or a
    callable mapping images [B,3,S,S] in [0,1] to {layer: activations [B,C,H,W]}.
    A trial that cannot be made (no donor, no free square) is kept as a row with a `status`
    saying why and no activation after. `workers`: threads that build the next batches of images while the
    model runs (runtime.built_ahead; results do not depend on it).
    """
    lg = logger or log
    if int(geometry.get("input_size", input_size)) != int(input_size):
        raise ValueError(f"geometry.json was measured at input_size {geometry['input_size']}, the model runs at "
                         f"{input_size}; rerun the geometry stage")
    if layer not in geometry.get("layers", {}):
        raise ValueError(f"layer '{layer}' is not in geometry.json (layers: {sorted(geometry.get('layers', {}))})")
    layer_geom = geometry["layers"][layer]

    psi = channels_only(psi)  # OR-units are validation rows: never chosen, never Random donors
    chosen, skipped = select_channels(psi, patches, cfg.n_channels)
    lg.info("layer %s: %d channels in the PSI table; %d eligible channels chosen (highest index first: %s)",
            layer, len(psi), len(chosen), chosen["channel"].tolist())
    for reason, count in skipped.items():
        lg.info("  skipped %d channel(s): %s", count, reason)
    if chosen.empty:  # e.g. one-class data or no split channel: the run goes on, the report says why
        lg.warning("no channel of layer '%s' has status 'ok' and k_hat >= 2 (skipped: %s): no interventions",
                   layer, skipped)
        trials = trials_table([])
        for col in ("activation_before", "activation_after", "delta", "delta_norm"):
            trials[col] = pd.Series(dtype=float)
        trials.insert(0, "layer", pd.Series(dtype=str))
        return trials
    if len(chosen) < cfg.n_channels:
        lg.warning("only %d of the requested %d channels are eligible", len(chosen), cfg.n_channels)

    top1 = chosen.get("top_activation")
    if top1 is None:
        top1 = chosen["channel"].map(patches.groupby("channel")["activation"].max())
    chosen = chosen.assign(top1_activation=top1.astype(float).to_numpy())
    bad = chosen[~(chosen["top1_activation"] > 0)]
    if len(bad):
        raise ValueError(f"channels {bad['channel'].tolist()} have top activation <= 0; cannot normalise deltas")

    scale = resolve_region_scale(cfg, layer_geom, input_size)
    side = max(1, int(round(scale * min(layer_geom["crop"], input_size))))
    lg.info("replaced square: %d px = %.3f x the %d px crop (%s)", side, scale, layer_geom["crop"],
            "interventions.region_scale" if cfg.region_scale is not None else
            "auto: largest leaving a non-overlapping square at every site")
    cfg = cfg.model_copy(update={"region_scale": scale})
    live = set(psi.loc[psi["status"] == OK, "channel"].astype(int))
    planned = plan(chosen, patches, layer_geom, input_size, cfg, live)
    trials = trials_table(planned)
    _check_boxes(trials, patches, scale, lg)
    paths = dict(zip(dataset["image_id"].astype(int), dataset["path"].astype(str)))
    missing = set(trials["image_id"]) | set(trials.loc[trials["donor_image_id"] >= 0, "donor_image_id"])
    missing -= set(paths)
    if missing:
        raise ValueError(f"image ids {sorted(missing)[:10]} of the patches table are not in dataset.parquet; "
                         "the tables come from different runs")

    @lru_cache(maxsize=128)
    def image(i: int) -> torch.Tensor:
        return load_image(paths[i], input_size)

    def build(t: Trial) -> torch.Tensor:
        return trial_image(t, image, mean, cfg.blend_px)

    # Jobs: one unmodified image per site ("before"), then one per feasible trial ("after").
    sites: dict[tuple[int, int], Site] = {}
    for t in planned:
        sites.setdefault((t.site.channel, t.site.rank), t.site)
    runnable = [i for i, t in enumerate(planned) if t.status == OK]
    jobs = [(s.channel, s.u, s.v, lambda s=s: image(s.image_id)) for s in sites.values()]
    jobs += [(t.site.channel, t.site.u, t.site.v, lambda t=t: build(t)) for t in (planned[i] for i in runnable)]
    extract = _as_extractor(model_or_extractor, layer, mean, std)
    try:
        values = _site_activations(extract, layer, jobs, device, cfg.batch_size,
                                   Progress(len(jobs), f"interventions {layer} (images)", lg), workers)
    finally:
        if extract is not model_or_extractor and hasattr(extract, "close"):
            extract.close()  # remove the hooks added to the model here
    before = dict(zip(sites, values[:len(sites)]))
    after = pd.Series(np.nan, index=trials.index)
    for i, a in zip(runnable, values[len(sites):]):
        after[i] = a

    trials["activation_before"] = [before[(c, s)] for c, s in zip(trials["channel"], trials["site_rank"])]
    trials["activation_after"] = after.to_numpy()
    trials["delta"] = trials["activation_after"] - trials["activation_before"]
    trials["delta_norm"] = trials["delta"] / trials["top1_activation"]
    trials.insert(0, "layer", layer)

    # The recomputed activation must match the mined one, or the crops/preprocessing disagree.
    gap = (trials["activation_before"] - trials["activation_mined"]).abs() / trials["top1_activation"]
    if gap.max() > 1e-3:
        lg.warning("recomputed site activations differ from the mined ones by up to %.3g of top-1 "
                   "(dataset, model or preprocessing differs from the mining run)", gap.max())
    for status, count in trials.loc[trials["status"] != OK, "status"].value_counts().items():
        lg.warning("%d trial(s) not run: %s", count, status)
    if trials["status"].str.startswith("no_free_position").any():
        best = max_free_scale(trials.drop_duplicates(["channel", "site_rank"]), layer_geom, input_size)
        lg.warning("the elsewhere controls need interventions.region_scale <= %.3f for every site of this run "
                   "(now %.3f)", best, cfg.region_scale)
    lg.info("layer %s: %d trials, %d run, mean delta_norm by condition: %s", layer, len(trials),
            int((trials["status"] == OK).sum()),
            trials[trials["status"] == OK].groupby("condition")["delta_norm"].mean().round(4).to_dict())
    return trials


def _check_boxes(trials: pd.DataFrame, patches: pd.DataFrame, scale: float, lg: logging.Logger) -> None:
    """At region_scale 1 the replaced region should be the crop that was embedded; warn if not."""
    cols = ["y0", "x0", "y1", "x1"]
    if scale != 1.0 or not set(cols) <= set(patches.columns) or trials.empty:
        return
    mined = patches.set_index(["channel", "rank"])[cols]
    site = trials.drop_duplicates(["channel", "site_rank"]).set_index(["channel", "site_rank"])
    ours = site[["site_y0", "site_x0", "site_y1", "site_x1"]].to_numpy()
    theirs = mined.loc[list(site.index)].to_numpy()
    off = np.abs(ours - theirs).max(axis=1)
    if (off > 0).any():
        lg.warning("%d of %d site regions differ from the embedded crop boxes of the patches table by up to %d px "
                   "(crop_box vs the patches stage)", int((off > 0).sum()), len(off), int(off.max()))
