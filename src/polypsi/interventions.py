"""Causal patch-swap interventions (paper section 5.3) and their paired statistics.

For each chosen channel c and each of its top sites (image, u, v) the region of the
site's crop is changed under five conditions and c's activation at (u, v) is measured
before and after:

- Aligned: a patch of the site's own cluster, taken from another image, pasted over the region;
- Non-aligned: a patch of another cluster of the same channel, pasted over the region;
- Random: a top patch of an unrelated channel, pasted over the region;
- Shuffled-position: the Aligned patch pasted at a random square that does not overlap the region;
- Ablate-elsewhere: a fill (mean colour, zero or noise) of the same square as Shuffled-position.

The two "elsewhere" conditions share their square, so they differ only in what is pasted.
Patches are resized to the region when sizes differ and pasted without blending unless
`blend_px` > 0. Every random choice comes from a generator seeded by (seed, channel, site
rank), so a channel's trials do not depend on which other channels were chosen.

The change is normalised by the channel's top-1 activation over the dataset (`delta_norm`).
A trial that cannot be made (no donor, no free square) is kept as a row with a `status`
saying why and no activation; `summarize` drops it from the statistics and counts it.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from .config import InterventionConfig

CONDITIONS = ("Aligned", "Non-aligned", "Random", "Shuffled-position", "Ablate-elsewhere")
OK = "ok"

log = logging.getLogger("polypsi.interventions")

Box = tuple[int, int, int, int]


# --------------------------------------------------------------------------- selection


def select_channels(psi: pd.DataFrame, patches: pd.DataFrame, n: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """The `n` highest-PSI channels with status "ok", k_hat >= 2 and >= 2 clusters among their patches.

    Returns the chosen rows of `psi` (highest PSI first) and {reason: number of channels skipped}.
    """
    need = {"channel", "psi", "status", "k_hat"}
    missing = need - set(psi.columns)
    if missing:
        raise ValueError(f"psi table lacks columns {sorted(missing)}; it must come from the calibrate stage")
    skipped: dict[str, int] = {}
    bad_status = psi["status"] != OK
    for status, count in psi.loc[bad_status, "status"].value_counts().items():
        skipped[f"status '{status}'"] = int(count)
    ok = psi[~bad_status]
    low_k = ok["k_hat"] < 2
    if low_k.any():
        skipped["k_hat < 2 (no second cluster for Non-aligned)"] = int(low_k.sum())
    ok = ok[~low_k]
    n_clusters = patches.groupby("channel")["cluster"].nunique()
    few = ok["channel"].map(n_clusters).fillna(0) < 2
    if few.any():
        skipped["fewer than 2 clusters among its patches"] = int(few.sum())
    ok = ok[~few]
    chosen = ok.sort_values(["psi", "channel"], ascending=[False, True], kind="stable").head(n)
    return chosen.reset_index(drop=True), skipped


# --------------------------------------------------------------------------- geometry helpers


def region_box(u: int, v: int, layer_geom: dict, input_size: int, scale: float | None) -> Box:
    """The replaced square of site (u, v): the crop box, or a square of scale x crop on the same centre."""
    from .crops import crop_box

    geom = dict(layer_geom)
    geom["crop"] = max(1, int(round((1.0 if scale is None else scale) * min(layer_geom["crop"], input_size))))
    return tuple(int(b) for b in crop_box(int(u), int(v), geom, input_size))


def donor_box(site_box: Box, u: int, v: int, donor_u: int, donor_v: int, stride: float,
              input_size: int) -> tuple[Box, int]:
    """The square cut from the donor image: the site's region moved by the offset between the two sites.

    The donor's content thus keeps the position relative to its site that the replaced content had
    relative to the target site, also when one of the two crops was shifted at an image border.
    Returns the box and how many pixels it had to be shifted back inside the donor image (misalignment).
    """
    y0, x0, y1, x1 = site_box
    h, w = y1 - y0, x1 - x0
    want_y = y0 + int(round((donor_u - u) * stride))
    want_x = x0 + int(round((donor_v - v) * stride))
    dy0 = min(max(want_y, 0), input_size - h)
    dx0 = min(max(want_x, 0), input_size - w)
    return (dy0, dx0, dy0 + h, dx0 + w), max(abs(dy0 - want_y), abs(dx0 - want_x))


def free_position(rng: np.random.Generator, size: int, h: int, w: int, avoid: Box) -> Optional[Box]:
    """A uniformly drawn h x w square inside the image that does not overlap `avoid`; None if none exists."""
    if h > size or w > size:
        return None
    y0, x0, y1, x1 = avoid
    ys = np.arange(size - h + 1)
    xs = np.arange(size - w + 1)
    # Two boxes are disjoint iff they are separated along y or along x.
    sep_y = (ys + h <= y0) | (ys >= y1)
    sep_x = (xs + w <= x0) | (xs >= x1)
    valid = np.flatnonzero((sep_y[:, None] | sep_x[None, :]).ravel())
    if valid.size == 0:
        return None
    k = int(rng.choice(valid))
    y, x = divmod(k, xs.size)
    return int(y), int(x), int(y + h), int(x + w)


def max_free_scale(sites: pd.DataFrame, layer_geom: dict, input_size: int) -> float:
    """The largest region_scale at which every site (u, v) has a free non-overlapping square; 0 if none."""
    crop = min(layer_geom["crop"], input_size)
    pairs = set(zip(sites["u"].astype(int), sites["v"].astype(int)))
    for side in range(crop, 0, -1):
        scale = side / crop
        # crop_box treats rows and columns alike, so the widest margin beside a region along y
        # depends on u only and along x on v only; a free square exists iff one margin >= side.
        margin = {}
        for i in {p[0] for p in pairs} | {p[1] for p in pairs}:
            lo, _, hi, _ = region_box(i, i, layer_geom, input_size, scale)
            margin[i] = max(lo, input_size - hi)
        if all(max(margin[u], margin[v]) >= side for u, v in pairs):
            return scale
    return 0.0


def resolve_region_scale(cfg: InterventionConfig, layer_geom: dict, input_size: int) -> float:
    """cfg.region_scale, or (null) the largest scale <= 1 leaving room for the elsewhere controls at every site."""
    if cfg.region_scale is not None:
        return float(cfg.region_scale)
    grid = pd.DataFrame([(u, v) for u in range(int(layer_geom["height"])) for v in range(int(layer_geom["width"]))],
                        columns=["u", "v"])
    best = max_free_scale(grid, layer_geom, input_size)
    return best if best > 0 else 1.0


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


# --------------------------------------------------------------------------- trial planning


def _donor_pool(patches: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Per channel its patches by rank, with `rel` = activation / the channel's largest (NaN if unknown)."""
    cols = [c for c in ("channel", "rank", "image_id", "u", "v", "cluster", "activation") if c in patches]
    pool = {}
    for c, g in patches.groupby("channel"):
        g = g[cols].sort_values("rank").reset_index(drop=True)
        top = g["activation"].max() if "activation" in g else np.nan
        g["rel"] = g["activation"] / top if top > 0 else np.nan
        pool[int(c)] = g
    return pool


def _unrelated_channels(channel: int, pool: dict[int, pd.DataFrame], live: set[int]) -> list[int]:
    """Live channels sharing the fewest top images with `channel` (ideally none): 'unrelated' by their data."""
    mine = set(pool[channel]["image_id"].tolist())
    overlap = {c: len(mine & set(g["image_id"].tolist())) for c, g in pool.items() if c != channel and c in live}
    if not overlap:
        return []
    least = min(overlap.values())
    return sorted(c for c, o in overlap.items() if o == least)


def _pick(rng: np.random.Generator, rows: pd.DataFrame, rel: float, mode: str) -> Optional[pd.Series]:
    """A donor row: any at random, or (matched) one whose relative activation is closest to the site's."""
    if rows.empty:
        return None
    if mode == "matched" and np.isfinite(rel) and rows["rel"].notna().all():
        gap = (rows["rel"] - rel).abs()
        rows = rows[gap == gap.min()]
    return rows.iloc[int(rng.integers(len(rows)))]


def plan_trials(chosen: pd.DataFrame, patches: pd.DataFrame, layer_geom: dict, input_size: int,
                cfg: InterventionConfig, live: set[int] | None = None) -> pd.DataFrame:
    """One row per (channel, site, condition) saying what is pasted where; no forward passes yet.

    `live`: channels whose top patches may serve as Random donors (default: all); a dead
    channel's "top patches" are arbitrary images, not features.
    """
    pool = _donor_pool(patches)
    live = set(pool) if live is None else set(live)
    scale = resolve_region_scale(cfg, layer_geom, input_size)
    rows = []
    for ch in chosen.itertuples(index=False):
        c = int(ch.channel)
        mine = pool[c]
        unrelated = _unrelated_channels(c, pool, live)
        for site in mine.head(cfg.sites_per_channel).itertuples(index=False):
            rng = np.random.default_rng([cfg.seed, c, int(site.rank)])
            img, clu = int(site.image_id), int(site.cluster)
            box = region_box(site.u, site.v, layer_geom, input_size, scale)
            h, w = box[2] - box[0], box[3] - box[1]
            others = mine[mine["image_id"] != img]  # a donor from the target image would paste its own content
            rel = float(site.rel)
            aligned = _pick(rng, others[others["cluster"] == clu], rel, cfg.donor)
            non_aligned = None
            other_clusters = sorted(set(others["cluster"]) - {clu})
            if other_clusters:
                oc = other_clusters[int(rng.integers(len(other_clusters)))]
                non_aligned = _pick(rng, others[others["cluster"] == oc], rel, cfg.donor)
            random_donor = None
            if unrelated:
                rc = unrelated[int(rng.integers(len(unrelated)))]
                random_donor = _pick(rng, pool[rc][pool[rc]["image_id"] != img], rel, cfg.donor)
            elsewhere = free_position(rng, input_size, h, w, box)
            noise_seed = int(rng.integers(2**31))
            base = dict(
                channel=c, psi=float(ch.psi), k_hat=int(ch.k_hat), site_rank=int(site.rank), image_id=img,
                u=int(site.u), v=int(site.v), cluster=clu, site_y0=box[0], site_x0=box[1], site_y1=box[2],
                site_x1=box[3], top1_activation=float(ch.top1_activation),
                activation_mined=float(mine.loc[mine["rank"] == site.rank, "activation"].iloc[0])
                if "activation" in mine else np.nan,
            )
            plans = [
                ("Aligned", aligned, box, "no donor of the same cluster in another image"),
                ("Non-aligned", non_aligned, box, "no donor of another cluster in another image"),
                ("Random", random_donor, box, "no unrelated channel with a patch in another image"),
                ("Shuffled-position", aligned, elsewhere, None),
                ("Ablate-elsewhere", "fill", elsewhere, None),
            ]
            for cond, donor, where, no_donor in plans:
                row = dict(base, region_scale=scale, condition=cond, status=OK, donor_channel=-1, donor_rank=-1,
                           donor_image_id=-1, donor_cluster=-1, donor_u=-1, donor_v=-1, donor_activation=np.nan,
                           donor_y0=-1, donor_x0=-1, donor_y1=-1, donor_x1=-1, donor_misalign_px=0, fill="",
                           noise_seed=noise_seed)
                if donor is None:
                    row["status"] = "no_donor: " + (no_donor or "no Aligned donor for this site")
                elif where is None:
                    row["status"] = f"no_free_position: no {h}x{w} square outside the site region in a " \
                                    f"{input_size}px image (lower interventions.region_scale)"
                if isinstance(donor, str):
                    row["fill"] = cfg.fill
                elif donor is not None:
                    src, shift = donor_box(box, site.u, site.v, donor.u, donor.v, layer_geom["stride"], input_size)
                    row.update(donor_channel=int(donor.channel), donor_rank=int(donor["rank"]),
                               donor_image_id=int(donor.image_id), donor_cluster=int(donor.cluster),
                               donor_u=int(donor.u), donor_v=int(donor.v),
                               donor_activation=float(donor.get("activation", np.nan)), donor_y0=src[0],
                               donor_x0=src[1], donor_y1=src[2], donor_x1=src[3], donor_misalign_px=shift)
                ry0, rx0, ry1, rx1 = where if where is not None else (-1, -1, -1, -1)
                row.update(region_y0=ry0, region_x0=rx0, region_y1=ry1, region_x1=rx1)
                rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- running


def _as_extractor(model_or_extractor, layer: str, mean, std) -> Callable[[torch.Tensor], dict]:
    if isinstance(model_or_extractor, torch.nn.Module):
        from .models import FeatureExtractor

        return FeatureExtractor(model_or_extractor, [layer], mean, std)
    if callable(model_or_extractor):
        return model_or_extractor
    raise TypeError(f"expected a torch model or a feature extractor, got {type(model_or_extractor).__name__}")


def _fill_patch(kind: str, h: int, w: int, mean, seed: int) -> torch.Tensor:
    if kind == "mean":
        return torch.tensor(mean, dtype=torch.float32).view(3, 1, 1).expand(3, h, w).clone()
    if kind == "zero":
        return torch.zeros(3, h, w)
    if kind == "noise":
        return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
    raise ValueError(f"interventions.fill '{kind}' is not one of mean, zero, noise")


def run_interventions(model_or_extractor, layer: str, psi: pd.DataFrame, patches: pd.DataFrame,
                      dataset: pd.DataFrame, geometry: dict, cfg: InterventionConfig, device, input_size: int,
                      mean, std, logger: logging.Logger | None = None) -> pd.DataFrame:
    """Run every trial; one row per (channel, site, condition) with activations before and after.

    `model_or_extractor`: a torch model (hooked with polypsi.models.FeatureExtractor here) or a
    callable mapping images [B,3,S,S] in [0,1] to {layer: activations [B,C,H,W]}.
    """
    from .crops import load_image
    from .runtime import Progress

    lg = logger or log
    if int(geometry.get("input_size", input_size)) != int(input_size):
        raise ValueError(f"geometry.json was measured at input_size {geometry['input_size']}, the model runs at "
                         f"{input_size}; rerun the geometry stage")
    if layer not in geometry.get("layers", {}):
        raise ValueError(f"layer '{layer}' is not in geometry.json (layers: {sorted(geometry.get('layers', {}))})")
    layer_geom = geometry["layers"][layer]

    chosen, skipped = select_channels(psi, patches, cfg.n_channels)
    lg.info("layer %s: %d channels in the PSI table; %d eligible channels chosen (highest PSI first: %s)",
            layer, len(psi), len(chosen), chosen["channel"].tolist())
    for reason, count in skipped.items():
        lg.info("  skipped %d channel(s): %s", count, reason)
    if chosen.empty:
        raise ValueError(f"no channel of layer '{layer}' has status 'ok' and k_hat >= 2 (skipped: {skipped}); "
                         "nothing to intervene on")
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
    trials = plan_trials(chosen, patches, layer_geom, input_size, cfg, live)
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

    def build(r) -> torch.Tensor:
        img = image(int(r.image_id))
        box = (r.region_y0, r.region_x0, r.region_y1, r.region_x1)
        if r.fill:
            patch = _fill_patch(r.fill, box[2] - box[0], box[3] - box[1], mean, int(r.noise_seed))
        else:
            patch = image(int(r.donor_image_id))[:, r.donor_y0:r.donor_y1, r.donor_x0:r.donor_x1]
        return paste(img, patch, box, cfg.blend_px)

    # Jobs: one unmodified image per site ("before") and one per feasible trial ("after").
    sites = trials.drop_duplicates(["channel", "site_rank"])[["channel", "site_rank", "image_id", "u", "v"]]
    jobs = [(None, r, lambda r=r: image(int(r.image_id))) for r in sites.itertuples(index=False)]
    jobs += [(i, r, lambda r=r: build(r)) for i, r in zip(trials.index, trials.itertuples(index=False))
             if r.status == OK]
    extract = _as_extractor(model_or_extractor, layer, mean, std)
    try:
        values = _site_activations(extract, layer, jobs, device, cfg.batch_size,
                                   Progress(len(jobs), f"interventions {layer} (images)", lg))
    finally:
        if extract is not model_or_extractor and hasattr(extract, "close"):
            extract.close()  # remove the hooks added to the model here
    before = {(int(r.channel), int(r.site_rank)): a for (i, r, _), a in zip(jobs, values) if i is None}
    after = pd.Series(np.nan, index=trials.index)
    for (i, _, _), a in zip(jobs, values):
        if i is not None:
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
        best = max_free_scale(sites, layer_geom, input_size)
        lg.warning("the elsewhere controls need interventions.region_scale <= %.3f for every site of this run "
                   "(now %.3f)", best, cfg.region_scale)
    lg.info("layer %s: %d trials, %d run, mean delta_norm by condition: %s", layer, len(trials),
            int((trials["status"] == OK).sum()),
            trials[trials["status"] == OK].groupby("condition")["delta_norm"].mean().round(4).to_dict())
    return trials


def _site_activations(extract, layer: str, jobs: list, device, batch_size: int, progress) -> list[float]:
    """Activation of each job's (channel, u, v) on the image its builder makes, in batches."""
    out: list[float] = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        x = torch.stack([make() for _, _, make in batch]).to(device)
        with torch.no_grad():
            acts = extract(x)[layer]
        dev = acts.device
        idx = torch.arange(len(batch), device=dev)
        ch = torch.tensor([int(r.channel) for _, r, _ in batch], device=dev)
        uu = torch.tensor([int(r.u) for _, r, _ in batch], device=dev)
        vv = torch.tensor([int(r.v) for _, r, _ in batch], device=dev)
        out += acts[idx, ch, uu, vv].float().cpu().tolist()
        progress.update(len(batch))
    return out


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


# --------------------------------------------------------------------------- statistics


def _mean_ci(x: np.ndarray, confidence: float) -> tuple[float, float, float, float, float]:
    """mean, sd, sem, ci_low, ci_high (Student t); NaN where n is too small."""
    n = len(x)
    if n == 0:
        return (np.nan,) * 5
    m = float(np.mean(x))
    if n < 2:
        return m, np.nan, np.nan, np.nan, np.nan
    sd = float(np.std(x, ddof=1))
    sem = sd / np.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return m, sd, sem, m - half, m + half


def paired_test(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict:
    """Paired t-test of a against b (two-sided), Cohen's d_z and the CI of the mean difference a - b."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    m, sd, sem, lo, hi = _mean_ci(d, confidence)
    out = dict(n_pairs=n, diff_mean=m, diff_ci_low=lo, diff_ci_high=hi, t=np.nan, pvalue=np.nan, cohens_dz=np.nan)
    if n < 2:
        return out
    if sd > 0:
        t = m / sem
        out.update(t=t, pvalue=float(2 * stats.t.sf(abs(t), n - 1)), cohens_dz=m / sd)
    elif m != 0:  # identical non-zero differences: the test is degenerate but the direction is certain
        out.update(t=float(np.sign(m) * np.inf), pvalue=0.0, cohens_dz=float(np.sign(m) * np.inf))
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and are not counted)."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


SUMMARY_COLUMNS = [
    "condition", "n", "mean_delta", "sem", "ci_low", "ci_high", "sd", "n_dropped", "dropped_reasons",
    "n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "t", "pvalue", "pvalue_holm", "cohens_dz", "unit",
]


def summarize(trials: pd.DataFrame, unit: str = "site", confidence: float = 0.95) -> pd.DataFrame:
    """One row per condition: mean normalised delta with its CI, and Aligned-vs-control paired tests.

    Only trials with status "ok" enter; the others are counted in `n_dropped` with their reasons.
    Pairs are the (channel, site_rank) present in both conditions. With unit="channel" every channel's
    sites (and paired differences) are averaged first, so n counts channels rather than sites.
    """
    if unit not in ("site", "channel"):
        raise ValueError(f"unit must be 'site' or 'channel', got {unit!r}")
    unknown = set(trials["condition"]) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions in the trials table: {sorted(unknown)}")
    key = ["channel", "site_rank"]
    if trials.duplicated(key + ["condition"]).any():
        raise ValueError("the trials table has more than one trial per (channel, site_rank, condition)")
    valid = trials[trials["status"] == OK]
    per = {c: valid[valid["condition"] == c].set_index(key)["delta_norm"] for c in CONDITIONS}

    def units(s: pd.Series) -> np.ndarray:
        return (s.groupby(level="channel").mean() if unit == "channel" else s).to_numpy(float)

    rows = []
    for cond in CONDITIONS:
        allc = trials[trials["condition"] == cond]
        dropped = allc.loc[allc["status"] != OK, "status"].str.split(":").str[0].value_counts()
        m, sd, sem, lo, hi = _mean_ci(units(per[cond]), confidence)
        row = dict(condition=cond, n=len(units(per[cond])), mean_delta=m, sem=sem, ci_low=lo, ci_high=hi, sd=sd,
                   n_dropped=int(dropped.sum()), dropped_reasons="; ".join(f"{k}={v}" for k, v in dropped.items()),
                   unit=unit)
        if cond != "Aligned":
            pairs = pd.concat([per["Aligned"].rename("a"), per[cond].rename("b")], axis=1, join="inner")
            if unit == "channel":
                pairs = pairs.groupby(level="channel").mean()
            row.update(paired_test(pairs["a"].to_numpy(), pairs["b"].to_numpy(), confidence))
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in SUMMARY_COLUMNS:
        if col not in out:
            out[col] = np.nan
    out["pvalue_holm"] = holm(out["pvalue"].tolist())
    out["n_pairs"] = out["n_pairs"].astype("Int64")
    return out[SUMMARY_COLUMNS]


# --------------------------------------------------------------------------- figure


def plot_summary(summary: pd.DataFrame, trials: pd.DataFrame, path, title: str = "",
                 confidence: float = 0.95) -> None:
    """Bar chart of mean normalised delta per condition with CI bars, trial points and p-values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .io import atomic_path

    sns.set_theme(style="whitegrid", context="notebook")
    colors = sns.color_palette("colorblind", len(CONDITIONS))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    x = np.arange(len(summary))
    means = summary["mean_delta"].to_numpy(float)
    err = np.vstack([means - summary["ci_low"].to_numpy(float), summary["ci_high"].to_numpy(float) - means])
    ax.bar(x, np.nan_to_num(means), color=colors, alpha=0.8, width=0.65)
    ax.errorbar(x, means, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=5, lw=1.2)
    valid = trials[trials["status"] == OK]
    rng = np.random.default_rng(0)  # jitter only
    for i, cond in enumerate(summary["condition"]):
        y = valid.loc[valid["condition"] == cond, "delta_norm"].to_numpy(float)
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(y)), y, s=9, color="black", alpha=0.35, lw=0, zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    lo, hi = ax.get_ylim()
    for i, r in enumerate(summary.itertuples(index=False)):
        label = f"n={r.n}"
        if r.condition != "Aligned" and pd.notna(r.pvalue):
            label += f"\np={r.pvalue:.2g}"
        elif r.condition != "Aligned":
            label += "\np=n/a"
        ax.text(i, hi, label, ha="center", va="bottom", fontsize=8)
    ax.set_ylim(lo, hi + 0.12 * (hi - lo))
    ax.set_xticks(x, summary["condition"], rotation=15)
    unit = summary["unit"].iloc[0] if len(summary) else "site"
    ax.set_ylabel("ΔA / top-1 activation")
    ax.set_title(title or f"Patch-swap interventions (mean, {100 * confidence:g}% CI; paired t vs Aligned, unit={unit})",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------- pipeline stages


def intervention_stage(psi_path, patches_path, dataset_path, geometry_path, out_path, layer: str, cfg,
                       log_file=None) -> pd.DataFrame:
    """The `interventions` rule: read the tables, load the model, run the trials, write one row per trial."""
    from .io import read_json, read_table, write_table
    from .models import load_model
    from .runtime import get_logger, resolve_device

    lg = get_logger("polypsi.interventions", log_file)
    device = resolve_device(cfg.device)
    patches = read_table(patches_path)
    patches = patches.drop(columns=[c for c in ("embedding",) if c in patches])  # not needed here
    model = load_model(cfg, device)
    lg.info("model loaded on %s; layer %s; settings %s", device, layer, cfg.interventions.model_dump())
    trials = run_interventions(model, layer, read_table(psi_path), patches, read_table(dataset_path),
                               read_json(geometry_path), cfg.interventions, device, cfg.model.input_size,
                               cfg.model.mean, cfg.model.std, logger=lg)
    write_table(trials, out_path)
    lg.info("wrote %s (%d rows)", out_path, len(trials))
    return trials


def summary_stage(trials_path, csv_path, png_path, unit: str = "site", confidence: float = 0.95,
                  log_file=None) -> pd.DataFrame:
    """The `interventions_summary` rule: statistics table and bar chart of one trial table."""
    from .io import read_table, write_csv
    from .runtime import get_logger

    lg = get_logger("polypsi.interventions", log_file)
    trials = read_table(trials_path)
    summary = summarize(trials, unit=unit, confidence=confidence)
    write_csv(summary, csv_path)
    layer = trials["layer"].iloc[0] if len(trials) else "?"
    title = (f"Patch-swap interventions, {layer}: {trials['channel'].nunique()} channels "
             f"(mean, {100 * confidence:g}% CI; paired t vs Aligned, unit={unit})")
    plot_summary(summary, trials, png_path, title=title, confidence=confidence)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        lg.info("intervention summary:\n%s", summary.to_string(index=False))
    return summary
