"""The seeded choices of the interventions: which channels and sites, which donors, which squares.

Every random choice comes from a generator seeded by (seed, channel, site rank), so a channel's
trials do not depend on which other channels were chosen. Nothing here runs the model.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ..calibration import channels_only
from ..config import InterventionConfig
from ..crops import crop_box
from .trial import OK, Box, Donor, Site, Trial, trials_table

# --------------------------------------------------------------------------- channels


def select_channels(psi: pd.DataFrame, patches: pd.DataFrame, n: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """The `n` highest-index real channels with status "ok", k_hat >= 2 and >= 2 clusters among their patches.

    Returns the chosen rows of `psi` (highest index first, ties by channel) and {reason: number of
    channels skipped}. OR-units (synthetic validation rows of the psi table) are never candidates.
    """
    need = {"channel", "index", "psi", "status", "k_hat"}
    missing = need - set(psi.columns)
    if missing:
        raise ValueError(f"psi table lacks columns {sorted(missing)}; it must come from the calibrate stage")
    psi = channels_only(psi)
    skipped: dict[str, int] = {}
    bad_status = psi["status"] != OK
    for status, count in psi.loc[bad_status, "status"].value_counts().items():
        skipped[f"status '{status}'"] = int(count)
    ok = psi[~bad_status]
    no_index = ~np.isfinite(ok["index"].to_numpy(float))
    if no_index.any():
        skipped["no finite index"] = int(no_index.sum())
    ok = ok[~no_index]
    low_k = ok["k_hat"] < 2
    if low_k.any():
        skipped["k_hat < 2 (no second cluster for Non-aligned)"] = int(low_k.sum())
    ok = ok[~low_k]
    n_clusters = patches.groupby("channel")["cluster"].nunique()
    few = ok["channel"].map(n_clusters).fillna(0) < 2
    if few.any():
        skipped["fewer than 2 clusters among its patches"] = int(few.sum())
    ok = ok[~few]
    chosen = ok.sort_values(["index", "channel"], ascending=[False, True], kind="stable").head(n)
    return chosen.reset_index(drop=True), skipped


# --------------------------------------------------------------------------- squares


def region_box(u: int, v: int, layer_geom: dict, input_size: int, scale: float | None) -> Box:
    """The replaced square of site (u, v): the crop box, or a square of scale x crop on the same centre."""
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


# --------------------------------------------------------------------------- donors


def _donor_pool(patches: pd.DataFrame, extra: tuple[str, ...] = ()) -> dict[int, pd.DataFrame]:
    """Per channel its patches by rank, with `rel` = activation / the channel's largest (NaN if unknown), and the
    `extra` columns after it."""
    cols = [c for c in ("channel", "rank", "image_id", "u", "v", "cluster", "activation") if c in patches]
    # One sort and one division for the whole table, then a slice per channel (a groupby loop building each
    # channel's frame took ~1.7 ms a channel: seconds for a layer of 2,048 channels).
    order = np.lexsort((patches["rank"].to_numpy(), patches["channel"].to_numpy()))
    df = patches[cols].iloc[order].reset_index(drop=True)
    if "activation" in df:
        top = df.groupby("channel", sort=False)["activation"].transform("max")
        df["rel"] = (df["activation"] / top).where(top > 0, np.nan)
    else:
        df["rel"] = np.nan
    for c in extra:
        df[c] = patches[c].to_numpy()[order]
    ch = df["channel"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ch[1:] != ch[:-1]])
    ends = np.r_[starts[1:], len(df)]
    return {int(ch[a]): df.iloc[a:b].reset_index(drop=True) for a, b in zip(starts, ends)}


def _image_sets(pool: dict[int, pd.DataFrame]) -> dict[int, set[int]]:
    """Per channel of a donor pool, the images of its top patches."""
    return {c: set(g["image_id"].tolist()) for c, g in pool.items()}


def _unrelated_channels(channel: int, images: dict[int, set[int]], live: set[int]) -> list[int]:
    """Live channels sharing the fewest top images with `channel` (ideally none): 'unrelated' by their data.

    `images`: _image_sets of the pool, built once (not once per channel: 2,048 sets a call at ResNet-50's layer4)."""
    mine = images[channel]
    overlap = {c: len(mine & s) for c, s in images.items() if c != channel and c in live}
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


def _donor(row, site: Site, stride: float, input_size: int) -> Donor:
    """The Donor of a patch row (a pd.Series or a dict of one: read by key)."""
    box, shift = donor_box(site.box, site.u, site.v, row["u"], row["v"], stride, input_size)
    return Donor(channel=int(row["channel"]), rank=int(row["rank"]), image_id=int(row["image_id"]),
                 cluster=int(row["cluster"]), u=int(row["u"]), v=int(row["v"]),
                 activation=float(row["activation"]) if "activation" in row else None, box=box, misalign_px=shift)


# --------------------------------------------------------------------------- trials


def plan(chosen: pd.DataFrame, patches: pd.DataFrame, layer_geom: dict, input_size: int,
         cfg: InterventionConfig, live: set[int] | None = None) -> list[Trial]:
    """The trials of every chosen channel: per top site, one per condition (in CONDITIONS order).

    `chosen`: rows of the psi table with `top1_activation` (and `index`: NaN in the trials without it).
    `live`: channels whose top patches may serve as Random donors (default: all); a dead channel's
    "top patches" are arbitrary images, not features.
    """
    pool = _donor_pool(patches)
    top_images = _image_sets(pool)
    live = set(pool) if live is None else set(live)
    scale = resolve_region_scale(cfg, layer_geom, input_size)
    trials: list[Trial] = []
    # The index by position: a namedtuple's `index` would shadow tuple.index, so it is not read from `ch`.
    index = chosen["index"].astype(float).to_numpy() if "index" in chosen else np.full(len(chosen), np.nan)
    for ch, ch_index in zip(chosen.itertuples(index=False), index):
        c = int(ch.channel)
        mine = pool[c]
        unrelated = _unrelated_channels(c, top_images, live)
        for s in mine.head(cfg.sites_per_channel).itertuples(index=False):
            rng = np.random.default_rng([cfg.seed, c, int(s.rank)])
            img, clu = int(s.image_id), int(s.cluster)
            box = region_box(s.u, s.v, layer_geom, input_size, scale)
            h, w = box[2] - box[0], box[3] - box[1]
            others = mine[mine["image_id"] != img]  # a donor from the target image would paste its own content
            rel = float(s.rel)
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
            site = Site(channel=c, index=float(ch_index), psi=float(ch.psi), k_hat=int(ch.k_hat), rank=int(s.rank),
                        image_id=img, u=int(s.u), v=int(s.v), cluster=clu, box=box,
                        top1_activation=float(ch.top1_activation),
                        activation_mined=float(mine.loc[mine["rank"] == s.rank, "activation"].iloc[0])
                        if "activation" in mine else None)
            plans = [  # condition, donor row (None: none found), changed square, why there is no donor
                ("Aligned", aligned, box, "no donor of the same cluster in another image"),
                ("Non-aligned", non_aligned, box, "no donor of another cluster in another image"),
                ("Random", random_donor, box, "no unrelated channel with a patch in another image"),
                ("Shuffled-position", aligned, elsewhere, "no Aligned donor for this site"),
                ("Ablate-elsewhere", None, elsewhere, None),
            ]
            for cond, donor, where, no_donor in plans:
                t = Trial(site=site, condition=cond, region_scale=scale, noise_seed=noise_seed, region=where)
                if cond == "Ablate-elsewhere":
                    t.fill = cfg.fill
                elif donor is not None:
                    t.donor = _donor(donor, site, layer_geom["stride"], input_size)
                if cond != "Ablate-elsewhere" and donor is None:
                    t.status = "no_donor: " + no_donor
                elif where is None:
                    t.status = f"no_free_position: no {h}x{w} square outside the site region in a " \
                               f"{input_size}px image (lower interventions.region_scale)"
                trials.append(t)
    return trials


def plan_trials(chosen: pd.DataFrame, patches: pd.DataFrame, layer_geom: dict, input_size: int,
                cfg: InterventionConfig, live: set[int] | None = None) -> pd.DataFrame:
    """`plan` as the trial table's planning columns: one row per (channel, site, condition), no activations."""
    return trials_table(plan(chosen, patches, layer_geom, input_size, cfg, live))
