"""The insertion protocol: a channel's cluster patches pasted into images where the channel is silent.

The replacement protocol swaps a channel's own top patches, which can only keep or lower an
activation that is already near its maximum. Insertion asks the causal question directly: does a
cluster's content, pasted on its own into an image where the channel is silent, make it fire?

Per tested channel c of the layer:
- **Neutral images**: c's largest activation over all sites of the image is at most the
  `insert.neutral_quantile` quantile of those maxima over the scanned images (`insert.scan_images`,
  a seeded subset of the dataset); `insert.images` of them are drawn (seeded per channel), never one
  of c's own top images.
- **The measured site** is fixed for the layer: the site nearest the image centre whose crop box
  (the layer's receptive-field square, `crops.size`) leaves room for a square of the region's side
  outside it, so the Off-RF control can be made. The region is the square of the replacement
  protocol (`region_scale` x crop, on the site's centre), so both protocols paste patches of one size.
- **Pairs**: on neutral image i, donor slot j (j < `insert.donors`) is one paired unit
  (`site_rank` = i x donors + j); every condition of the unit is measured on the same image.
- **Conditions** (paired within the unit):
  - `Cluster` (one per cluster k of c, `cluster` = k): the region <- the patch of cluster k's j-th
    donor, the members nearest the cluster's prototype (cosine to the mean embedding; by rank when the
    table has no embeddings), those whose square fits in their image without a shift of more than half
    a stride first; cycled when the cluster has fewer members than donors;
  - `Random`: the region <- a top patch of a channel unrelated to c (the replacement protocol's rule);
  - `Off-RF`: the patch of `Cluster` for cluster clusters[j mod n] pasted at a random square of the
    same size that does not overlap the measured site's crop box;
  - `Ablate`: the region filled with `fill` (same size).
  The donor square is cut around the donor's site and keeps its offset to it (`plan.donor_box`).
  Donors never come from the neutral image. Seeded by (seed, channel, unit).
"""

from __future__ import annotations

import dataclasses
import logging
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch

from ..calibration import channels_only
from ..config import InterventionConfig
from ..crops import crop_box, load_image
from ..runtime import Progress
from .plan import (_donor, _donor_pool, _image_sets, _unrelated_channels, donor_box, free_position, region_box,
                   resolve_region_scale)
from .run import _as_extractor, layer_batches, trial_image
from .trial import OK, Donor, Site, Trial, trials_table

log = logging.getLogger("polypsi.interventions")

INSERT_STREAM = 1_000_003  # seeds the insertion's generators apart from the replacement's (seed, channel, rank)

# --------------------------------------------------------------------------- channels, site, images


def select_insert_channels(psi: pd.DataFrame, patches: pd.DataFrame, n: Optional[int]) -> pd.DataFrame:
    """Live channels (status ok, finite index, with patches), `n` of them evenly spread over the index ranking.

    Evenly spread (not the top n) so that the rank correlation of the index with causal
    polysemanticity spans the index's range; null = all. Highest index first.
    """
    ok = psi[(psi["status"] == OK) & np.isfinite(psi["index"].to_numpy(float))]
    ok = ok[ok["channel"].isin(set(patches["channel"]))]
    ok = ok.sort_values(["index", "channel"], ascending=[False, True], kind="stable").reset_index(drop=True)
    if n is not None and n < len(ok):
        ok = ok.iloc[np.unique(np.round(np.linspace(0, len(ok) - 1, n)).astype(int))].reset_index(drop=True)
    return ok


def measured_site(layer_geom: dict, input_size: int, side: int) -> tuple[int, int, bool]:
    """(u, v, room): the site nearest the image centre whose crop box leaves room for a side x side square
    outside it (room=True); without such a site, the site nearest the centre (room=False)."""
    h, w = int(layer_geom["height"]), int(layer_geom["width"])
    centre = (input_size - 1) / 2
    best, best_room = None, None
    for u in range(h):
        for v in range(w):
            y0, x0, y1, x1 = crop_box(u, v, layer_geom, input_size)
            room = max(y0, input_size - y1, x0, input_size - x1) >= side
            cy = layer_geom["offset"] + u * layer_geom["stride"]
            cx = layer_geom["offset"] + v * layer_geom["stride"]
            key = (not room, (cy - centre) ** 2 + (cx - centre) ** 2, u, v)
            if best is None or key < best:
                best, best_room = key, room
    return int(best[2]), int(best[3]), bool(best_room)


def neutral_images(maxima: pd.Series, quantile: float, n: int, rng: np.random.Generator,
                   exclude: set[int]) -> tuple[list[int], float]:
    """`n` images (sorted ids) drawn among those whose maximum is <= the quantile of `maxima` (image_id ->
    the channel's largest activation in the image), leaving out `exclude`; and the threshold."""
    threshold = float(np.quantile(maxima.to_numpy(float), quantile))
    pool = sorted(int(i) for i in maxima.index[maxima.to_numpy(float) <= threshold] if int(i) not in exclude)
    if len(pool) > n:
        pool = sorted(int(i) for i in rng.choice(pool, n, replace=False))
    return pool, threshold


def prototype_order(members: pd.DataFrame, shifted: Optional[np.ndarray] = None) -> pd.DataFrame:
    """A cluster's members, nearest its prototype (cosine to the mean embedding) first; by rank without embeddings.

    `shifted` (bool per member): members whose square would have to be shifted at their image's border
    go after all the others (still by prototype): their content lands away from the measured site.
    """
    key = np.zeros(len(members)) if shifted is None else np.asarray(shifted, dtype=float)
    if "embedding" in members and not members.empty:
        e = np.stack(members["embedding"].to_numpy()).astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True) + 1e-12
        proto = e.mean(0)
        proto /= np.linalg.norm(proto) + 1e-12
        cos = -(e @ proto)
    else:
        cos = np.zeros(len(members))
    # by (shifted, -cosine, rank); a stable sort, so exact ties keep the members' order
    return members.iloc[np.lexsort((members["rank"].to_numpy(), cos, key))]


# --------------------------------------------------------------------------- plan


class _Rows:
    """A donor table as plain rows (dicts) and its image ids: a planning loop picks thousands of donors, and a
    pandas row or filter costs about as much as the rest of a trial's planning."""

    def __init__(self, df: pd.DataFrame):
        self.records = df.to_dict("records")
        self.image_id = df["image_id"].to_numpy()

    def not_in(self, image_id: int) -> np.ndarray:
        """Positions of the rows from other images (a donor from the target image would paste its own content)."""
        return np.flatnonzero(self.image_id != image_id)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One neutral image of a channel with the image's scan maximum and the channel's threshold."""

    image_id: int
    neutral_max: float
    threshold: float


def plan_insert(chosen: pd.DataFrame, patches: pd.DataFrame, maxima: pd.DataFrame, layer_geom: dict,
                input_size: int, scale: float, cfg: InterventionConfig,
                live: set[int] | None = None) -> tuple[list[Trial], dict[tuple[int, int], Unit], tuple[int, int]]:
    """The insertion trials of every chosen channel, per paired unit in INSERT_CONDITIONS order (one
    Cluster trial per cluster); the neutral image of each (channel, site_rank); the measured site (u, v).

    `maxima`: image_id x channel, each channel's largest activation in each scanned image.
    """
    ic = cfg.insert
    pool = _donor_pool(patches, extra=("embedding",) if "embedding" in patches else ())
    top_images = _image_sets(pool)
    live = set(pool) if live is None else set(live)
    side = max(1, int(round(scale * min(layer_geom["crop"], input_size))))
    u, v, room = measured_site(layer_geom, input_size, side)
    box = region_box(u, v, layer_geom, input_size, scale)
    rf = crop_box(u, v, layer_geom, input_size)
    trials: list[Trial] = []
    units: dict[tuple[int, int], Unit] = {}
    index = chosen["index"].astype(float).to_numpy()
    others: dict[int, _Rows] = {}  # the Random donors' channels, as rows
    for ch, ch_index in zip(chosen.itertuples(index=False), index):
        c = int(ch.channel)
        mine = pool[c]
        clusters = sorted(int(k) for k in mine["cluster"].unique())
        # A donor square shifted back inside its image by more than half a stride no longer centres the
        # donor's site on the measured one (at the demo's layer4 such donors raised the channel by 0.07 of
        # top-1 against 0.52), so aligned members are preferred.
        shifted = np.array([donor_box(box, u, v, du, dv, layer_geom["stride"], input_size)[1]
                            > layer_geom["stride"] / 2 for du, dv in zip(mine["u"], mine["v"])], dtype=bool)
        ordered = {k: _Rows(prototype_order(mine[mine["cluster"] == k], shifted[(mine["cluster"] == k).to_numpy()]))
                   for k in clusters}
        unrelated = _unrelated_channels(c, top_images, live)
        rng = np.random.default_rng([cfg.seed, INSERT_STREAM, c])
        images, threshold = neutral_images(maxima[c], ic.neutral_quantile, ic.images, rng,
                                           exclude=set(mine["image_id"].astype(int)))
        for i, img in enumerate(images):
            elsewhere = {k: ordered[k].not_in(img) for k in clusters}  # a cluster's members in other images
            for j in range(ic.donors):
                pair = i * ic.donors + j
                units[(c, pair)] = Unit(img, float(maxima.at[img, c]), threshold)
                rng = np.random.default_rng([cfg.seed, INSERT_STREAM, c, pair + 1])
                site = Site(channel=c, index=float(ch_index), psi=float(ch.psi), k_hat=int(ch.k_hat), rank=pair,
                            image_id=img, u=u, v=v, cluster=-1, box=box,
                            top1_activation=float(ch.top1_activation), activation_mined=None)
                donors: dict[int, Optional[Donor]] = {}
                for k in clusters:
                    rows = elsewhere[k]
                    donors[k] = _donor(ordered[k].records[rows[j % len(rows)]], site, layer_geom["stride"],
                                       input_size) if len(rows) else None
                    t = Trial(site=dataclasses.replace(site, cluster=k), condition="Cluster", region_scale=scale,
                              noise_seed=0, region=box, donor=donors[k])
                    if donors[k] is None:
                        t.status = "no_donor: no member of this cluster in another image"
                    trials.append(t)
                rand = None
                if unrelated:
                    rc = unrelated[int(rng.integers(len(unrelated)))]
                    if rc not in others:
                        others[rc] = _Rows(pool[rc])
                    rows = others[rc].not_in(img)
                    if len(rows):  # any of them (the site has no relative activation to match)
                        rand = _donor(others[rc].records[rows[int(rng.integers(len(rows)))]], site,
                                      layer_geom["stride"], input_size)
                t = Trial(site=site, condition="Random", region_scale=scale, noise_seed=0, region=box, donor=rand)
                if rand is None:
                    t.status = "no_donor: no unrelated channel with a patch in another image"
                trials.append(t)
                k_off = clusters[j % len(clusters)]
                where = free_position(rng, input_size, box[2] - box[0], box[3] - box[1], rf) if room else None
                noise_seed = int(rng.integers(2**31))
                t = Trial(site=dataclasses.replace(site, cluster=k_off), condition="Off-RF", region_scale=scale,
                          noise_seed=noise_seed, region=where, donor=donors[k_off])
                if donors[k_off] is None:
                    t.status = "no_donor: no member of this cluster in another image"
                elif where is None:
                    t.status = (f"no_free_position: no {side}x{side} square outside the measured site's "
                                f"{rf[2] - rf[0]}px crop box (lower interventions.region_scale)")
                trials.append(t)
                trials.append(Trial(site=site, condition="Ablate", region_scale=scale, noise_seed=noise_seed,
                                    region=box, fill=cfg.fill))
    return trials, units, (u, v)


# --------------------------------------------------------------------------- forward passes


def image_maxima(extract: Callable, layer: str, image_ids: list[int], load: Callable[[int], torch.Tensor],
                 device, batch_size: int, progress=None, workers: int = 0) -> pd.DataFrame:
    """image_id x channel: each channel's largest activation over the sites of each image (`workers`: threads
    that load the next batches while the model runs)."""
    rows = []
    for ids, acts in layer_batches(extract, layer, image_ids, load, device, batch_size, workers):
        rows.append(acts.flatten(2).amax(2).float().cpu().numpy())
        if progress is not None:
            progress.update(len(ids))
    return pd.DataFrame(np.concatenate(rows), index=pd.Index(image_ids, name="image_id"))


def keyed_activations(extract: Callable, layer: str, jobs: list, device, batch_size: int,
                      progress=None, workers: int = 0) -> tuple[list[float], list[np.ndarray]]:
    """Activation of each job's (channel, u, v) on its image, and the whole layer's vector at (u, v).

    A job is (key, channel, u, v, make); jobs with the same key share one image (built once: one
    forward pass gives every channel). Returns (values, vectors), one per job. `workers`: threads that build
    the next batches while the model runs.
    """
    first: dict = {}
    for key, *_rest, make in jobs:
        first.setdefault(key, make)
    keys = list(first)
    where = {k: n for n, k in enumerate(keys)}
    sites: dict[int, list] = {}
    for key, _c, u, v, _ in jobs:
        sites.setdefault(where[key], []).append((u, v))
    vectors: dict[tuple[int, int, int], np.ndarray] = {}
    for batch, acts in layer_batches(extract, layer, keys, lambda k: first[k](), device, batch_size, workers):
        for b, k in enumerate(batch):
            n = where[k]
            for u, v in set(sites[n]):
                vectors[(n, u, v)] = acts[b, :, u, v].float().cpu().numpy()
        if progress is not None:
            progress.update(len(batch))
    vec = [vectors[(where[key], u, v)] for key, _c, u, v, _ in jobs]
    return [float(x[c]) for x, (_k, c, *_r) in zip(vec, jobs)], vec


def signatures(trials: pd.DataFrame, after: list[np.ndarray], before: dict[tuple[int, int], np.ndarray],
               rows: list[int]) -> pd.DataFrame:
    """Per (channel, cluster): the mean change of the whole layer at the measured site when the cluster's
    patches are inserted (after - before, over its Cluster trials), the channel's own entry left out.

    Two clusters that drive a channel through the same content change the rest of the layer alike;
    `causal.cluster_table` compares these vectors to tell distinct causes apart.
    """
    sums: dict[tuple[int, int], list] = {}
    cond, chan, clus, rank = (trials[col].to_numpy() for col in ("condition", "channel", "cluster", "site_rank"))
    for n, vec in zip(rows, after):
        if cond[n] != "Cluster":
            continue
        c, k = int(chan[n]), int(clus[n])
        d = vec - before[(c, int(rank[n]))]
        d = np.delete(d, c)
        acc = sums.setdefault((c, k), [np.zeros_like(d), 0])
        acc[0] += d
        acc[1] += 1
    out = [dict(channel=c, cluster=k, signature=(tot / m).astype(np.float32)) for (c, k), (tot, m) in sums.items()]
    return pd.DataFrame(out, columns=["channel", "cluster", "signature"])


def run_insert(extract: Callable, layer: str, chosen: pd.DataFrame, patches: pd.DataFrame,
               paths: dict[int, str], geometry_layer: dict, cfg: InterventionConfig, scale: float, device,
               input_size: int, mean, live: set[int],
               lg: logging.Logger | None = None, workers: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan for neutral images, plan and run the insertion trials: one row per trial (see docs/interventions.md),
    and the clusters' layer signatures (`signatures`)."""
    lg = lg or log
    ic = cfg.insert
    ids = sorted(paths)
    if ic.scan_images is not None and ic.scan_images < len(ids):
        rng = np.random.default_rng([cfg.seed, INSERT_STREAM])
        ids = sorted(int(i) for i in rng.choice(ids, ic.scan_images, replace=False))

    @lru_cache(maxsize=256)  # thread-safe: images are built in `workers` threads
    def image(i: int) -> torch.Tensor:
        return load_image(paths[i], input_size)

    maxima = image_maxima(extract, layer, ids, image, device, cfg.batch_size,
                          Progress(len(ids), f"insert {layer} (scan for neutral images)", lg), workers)
    planned, units, (u, v) = plan_insert(chosen, patches, maxima, geometry_layer, input_size, scale, cfg, live)
    lg.info("insertion: %d channels, measured site (u, v) = (%d, %d), region %s, %d trials", len(chosen), u, v,
            planned[0].site.box if planned else None, len(planned))

    def build(t: Trial) -> torch.Tensor:
        return trial_image(t, image, mean, cfg.blend_px)

    def key(t: Trial) -> tuple:
        d = t.donor
        what = (t.fill, t.noise_seed if t.fill == "noise" else 0) if t.fill else (d.image_id, d.box)
        return ("after", t.site.image_id, t.region, what)

    befores = {(t.site.channel, t.site.rank): t.site for t in planned}
    runnable = [n for n, t in enumerate(planned) if t.status == OK]
    jobs = [(("before", s.image_id), s.channel, s.u, s.v, lambda s=s: image(s.image_id)) for s in befores.values()]
    jobs += [(key(planned[n]), planned[n].site.channel, u, v, lambda t=planned[n]: build(t)) for n in runnable]
    values, vectors = keyed_activations(extract, layer, jobs, device, cfg.batch_size,
                                        Progress(len({j[0] for j in jobs}), f"insert {layer} (images)", lg), workers)
    before = dict(zip(befores, values[:len(befores)]))
    before_vec = dict(zip(befores, vectors[:len(befores)]))
    after = np.full(len(planned), np.nan)
    after[runnable] = values[len(befores):]
    trials = trials_table(planned)
    sig = signatures(trials, vectors[len(befores):], before_vec, runnable)
    trials["activation_before"] = [before[(c, s)] for c, s in zip(trials["channel"], trials["site_rank"])]
    trials["activation_after"] = after
    trials["delta"] = trials["activation_after"] - trials["activation_before"]
    trials["delta_norm"] = trials["delta"] / trials["top1_activation"]
    unit = [units[(c, s)] for c, s in zip(trials["channel"], trials["site_rank"])]
    trials["neutral_max"] = [x.neutral_max for x in unit]
    trials["neutral_threshold"] = [x.threshold for x in unit]
    short = trials.drop_duplicates("channel")
    few = short[short["channel"].map(trials.groupby("channel")["image_id"].nunique()) < ic.images]
    if len(few):
        lg.warning("%d channel(s) have fewer than %d neutral images: %s", len(few), ic.images, few["channel"].tolist())
    for status, count in trials.loc[trials["status"] != OK, "status"].value_counts().items():
        lg.warning("%d insertion trial(s) not run: %s", count, status)
    return trials, sig


def empty_insert_table() -> pd.DataFrame:
    t = trials_table([])
    for col in ("activation_before", "activation_after", "delta", "delta_norm", "neutral_max", "neutral_threshold"):
        t[col] = pd.Series(dtype=float)
    return t



def run_insertions(model_or_extractor, layer: str, psi: pd.DataFrame, patches: pd.DataFrame, dataset: pd.DataFrame,
                   geometry: dict, cfg: InterventionConfig, device, input_size: int, mean, std,
                   logger: logging.Logger | None = None, workers: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The insertion protocol on one layer: choose channels, scan, plan, run.

    Arguments as polypsi.interventions.run_interventions. Returns one row per trial (no live channel: an
    empty table with the same columns) and the clusters' layer signatures (`signatures`).
    """
    lg = logger or log
    if int(geometry.get("input_size", input_size)) != int(input_size):
        raise ValueError(f"geometry.json was measured at input_size {geometry['input_size']}, the model runs at "
                         f"{input_size}; rerun the geometry stage")
    layer_geom = geometry["layers"][layer]
    psi = channels_only(psi)
    chosen = select_insert_channels(psi, patches, cfg.insert.channels)
    lg.info("insertion, layer %s: %d live channels chosen (insert.channels = %s)", layer, len(chosen),
            cfg.insert.channels)
    if chosen.empty:
        lg.warning("no live channel on layer '%s': no insertion trials", layer)
        t = empty_insert_table()
        t.insert(0, "layer", pd.Series(dtype=str))
        return t, pd.DataFrame(columns=["channel", "cluster", "signature"])
    top1 = chosen.get("top_activation")
    if top1 is None:
        top1 = chosen["channel"].map(patches.groupby("channel")["activation"].max())
    chosen = chosen.assign(top1_activation=top1.astype(float).to_numpy())
    chosen = chosen[chosen["top1_activation"] > 0].reset_index(drop=True)
    scale = resolve_region_scale(cfg, layer_geom, input_size)
    live = set(psi.loc[psi["status"] == OK, "channel"].astype(int))
    paths = dict(zip(dataset["image_id"].astype(int), dataset["path"].astype(str)))
    extract = _as_extractor(model_or_extractor, layer, mean, std)
    try:
        trials, sig = run_insert(extract, layer, chosen, patches, paths, layer_geom, cfg, scale, device, input_size,
                            mean, live, lg, workers)
    finally:
        if extract is not model_or_extractor and hasattr(extract, "close"):
            extract.close()
    trials.insert(0, "layer", layer)
    ok = trials[trials["status"] == OK]
    lg.info("insertion, layer %s: %d trials, %d run, mean delta_norm by condition: %s", layer, len(trials), len(ok),
            ok.groupby("condition")["delta_norm"].mean().round(4).to_dict())
    return trials, sig
