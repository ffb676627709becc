"""Layer geometry: where a feature-map site looks in the input, and whether that can be trusted.

Stride: the input growth that adds one feature-map unit (probe and twice the probe).

Centre offset (centre of unit i = offset + i * stride), from two probes:

- Architecture probe. Where every module is a standard layer (convolution, linear, batch
  norm, pooling, pointwise activation, dropout), a copy with constant positive weights,
  identity activations and norms, and average- instead of max-pooling is linear: the
  centre of mass of its input gradient is the receptive-field centre of the architecture,
  the same for any weights and any data. Such layers take their offset from it.
- Gradient probe (Luo et al. 2016, "Understanding the Effective Receptive Field"):
  |d sum_c A[c, u, v] / d input| of the real model, averaged over white-noise images and a
  few central units, each image's map normalised to unit mass (a few images with large
  gradients cannot dominate). Its centre is the centre of mass inside a window symmetric
  about it (the probe border does not pull it). A single map is very noisy where max
  operations pick the gradient's path (ReLU gating, max-pooling, a max over detectors): a
  unit's centre of mass moves by several pixels from image to image, which is why a few
  probe images gave offsets 2-7 px apart. So images come in pairs, a noise image and its
  point reflection about the unit's centre (still white noise: the estimate stays
  unbiased): where the model is mirror-symmetric about that centre, the two maps err in
  opposite directions and the pair's mean is nearly exact. The centre of symmetry is
  looked for first (a noise image against its reflections about candidate centres), and
  sampling goes on until the standard error is small. Layers the architecture probe cannot
  linearise (custom modules, attention) take their offset from this probe; for the others
  it checks the architecture's centre.

Effective receptive field (ERF): the side of the square, centred on the measured centre,
holding `crops.erf_mass` of the gradient probe's averaged mass (white-noise inputs, as in Luo
et al.); pixels count with the part of them inside the square, so the side is continuous.
Lone noise images shared by all layers add to the ERF until its standard error is small and
the ERFs of successive layers are told apart. The probe image grows (from 8 strides, up to
`probe_size`; standard conv nets start there) until the gradient mass stays clear of its border.

Each layer says whether its geometry can be trusted (`reliable`, `offset_reliable`,
`erf_reliable`, `warning`): the two probes or the rows and columns disagree by more than 1 px
beyond noise, the centre is still uncertain when the budget is spent, no gradient reaches the
units, the ERF reaches the probe border, stays uncertain, or does not grow with depth. The log
warns about each; `crops.size_rule: erf` refuses an ERF that cannot be trusted.

Token layers (transformer blocks, [B, N, C]) take one input size: their sites are the patch
tokens, the stride is the input size over the patch grid's side, and the centre is measured
with the gradient probe at the model's own input size.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import torch
from torch import nn

from .config import Config
from .errors import StageError
from .io import write_json
from .modelfit import check_geometry
from .models import as_grid, build_model, preprocessing, prefix_tokens_of

log = logging.getLogger("polypsi.geometry")

# Sampling
PILOT_PAIRS = 2  # noise-image pairs per layer at each probe size tried (they also count at the final size)
MIN_PAIRS = 8  # pairs per layer about its final reflection axis (gradient offset)
MIN_PAIRS_ARCH = 3  # the same where the architecture probe gives the offset (the pairs only check it)
MAX_PAIRS = 128  # images per layer: at most twice this, and at most PIXEL_BUDGET input pixels
PIXEL_BUDGET = 3 * 2**20
BATCH_PIXELS = 2**20  # input pixels per forward/backward pass (memory)
# Centre
SE_TARGET = 0.2  # px: standard error of the gradient centre at which sampling stops
SE_CHECK = 0.35  # px: the same where the architecture probe gives the offset
SE_LIMIT = 0.25  # px: a gradient offset less certain than this is unreliable
AGREE_PX = 1.0  # centres more than this apart (beyond twice their standard error) disagree
SCAN_PX = 4.0  # px: candidate centres of symmetry half a stride (at least this) either side of the estimate
SCAN_TOP, SCAN_IMAGES = 3, 2  # the best candidates are scored again, on this many fresh images
SCAN_MISMATCH, SCAN_CONTRAST = 0.25, 0.5  # a centre of symmetry mismatches less than this, and less than
# this share of the median candidate
# ERF
ERF_SE = (2.0, 0.05)  # px, share of the side: standard error of the ERF side at which sampling stops
ERF_SE_LIMIT = (3.0, 0.08)  # an ERF side less certain than this is unreliable
REACH_MASS = 0.99  # the share of the gradient mass that should lie well inside the probe image
REACH_OK = 0.8  # its half-side over that of the largest centred square in the probe: up to this the probe is
# large enough (the border leaves the maps nearly mirror-symmetric); above 1 the probe truncates the ERF

_LINEAR_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
_LINEAR_IDENTITY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                    nn.Mish, nn.Hardswish, nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
_LINEAR_KEEP = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.ZeroPad2d, nn.ConstantPad2d)
_LINEAR_MAXPOOL = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


# ------------------------------------------------------------------------------------------- shapes


def _feature_shapes(model: nn.Module, layers: list[str], size: int,
                    prefix: int | None = None) -> dict[str, tuple[int, int, int, bool]]:
    """(channels, height, width, is a token layer) of every layer's output for a size x size input, in one pass.

    The dict is in the order the layers ran (their depth order).
    """
    store = {}
    modules = dict(model.named_modules())

    def keep(layer):
        def hook(_m, _i, o):
            raw = o[0] if isinstance(o, (tuple, list)) else o
            store[layer] = (*as_grid(o, layer, prefix, 1).shape[1:], raw.dim() == 3)
        return hook

    hooks = [modules[l].register_forward_hook(keep(l)) for l in layers]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return store


def _probe_shapes(model, layers, sizes, prefix):
    """Shapes at each probe size, or None when the model takes only its own input size (e.g. a ViT)."""
    try:
        return [_feature_shapes(model, layers, s, prefix) for s in sizes]
    except (RuntimeError, AssertionError, ValueError):
        return None


# ------------------------------------------------------------------------------- input gradients


class _Stop(Exception):
    """Raised by a forward hook once every needed layer has run: the rest of the model is skipped."""


def _unit_maps(model: nn.Module, x: torch.Tensor, picks: dict[str, list[tuple[int, int] | None]],
               prefix: int | None) -> dict[str, np.ndarray]:
    """For every layer in picks: |d sum_c A_layer[b, c, u_b, v_b] / d x[b]| summed over colour channels,
    [B, S, S], where picks[layer][b] = (u_b, v_b), or None for images the layer skips (zero maps).

    One forward pass up to the deepest layer needed, one backward pass per layer: images are independent in
    eval mode, so the gradient of the sum over images is every image's own map.
    """
    needed = [l for l, p in picks.items() if any(q is not None for q in p)]
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def keep(layer):
        def hook(_m, _i, o):
            store[layer] = o
            if len(store) == len(needed):
                raise _Stop
        return hook

    x = x.detach().requires_grad_(True)
    hooks = [modules[l].register_forward_hook(keep(l)) for l in needed]
    out = {l: np.zeros((x.shape[0], x.shape[-2], x.shape[-1])) for l in picks}
    try:
        with torch.enable_grad():
            try:
                model(x)
            except _Stop:
                pass
            missing = [l for l in needed if l not in store]
            if missing:
                raise StageError(f"layer(s) {missing} did not run in the model's forward pass; geometry needs them")
            for i, layer in enumerate(needed):
                a = as_grid(store[layer], layer, prefix, x.shape[0])
                idx = [b for b, p in enumerate(picks[layer]) if p is not None]
                b = torch.tensor(idx, device=a.device)
                u = torch.tensor([picks[layer][j][0] for j in idx], device=a.device)
                v = torch.tensor([picks[layer][j][1] for j in idx], device=a.device)
                (grad,) = torch.autograd.grad(a[b, :, u, v].float().sum(), x, retain_graph=i < len(needed) - 1,
                                              allow_unused=True)
                if grad is not None:
                    out[layer] = grad.abs().sum(1).double().cpu().numpy()
    finally:
        for h in hooks:
            h.remove()
    return out


def _reflect(img: torch.Tensor, twice_y: int, twice_x: int) -> torch.Tensor:
    """Point reflection of [.., S, S] about (twice_y / 2, twice_x / 2), wrapping around (white noise stays white)."""
    pos = torch.arange(img.shape[-1])
    return img[..., (twice_y - pos) % img.shape[-2], :][..., (twice_x - pos) % img.shape[-1]]


def _windowed(profiles: np.ndarray, base: np.ndarray, o: float) -> np.ndarray:
    """Each profile's centre of mass inside the widest window symmetric about every o + base[i] that fits in
    the probe, minus base[i] (NaN where the window holds no mass). profiles: [n, S] marginals."""
    size = profiles.shape[1]
    pos = np.arange(size, dtype=float)
    c = o + base
    radius = max(0.5, float(np.min(np.minimum(c, size - 1 - c))))
    w = np.clip(radius + 0.5 - np.abs(pos[None] - c[:, None]), 0.0, 1.0) * profiles
    mass = w.sum(1)
    ok = mass > 0
    return np.where(ok, (w * pos).sum(1) / np.where(ok, mass, 1.0) - base, np.nan)


def _window_centre(profiles: np.ndarray, base: np.ndarray, guess: float) -> tuple[float, np.ndarray]:
    """Offset o such that the profiles' centres of mass inside windows symmetric about o + base[i] are, on
    average, o + base[i]; and each profile's own windowed centre - base[i].

    The window is the widest one symmetric about every centre that fits in the probe, so the probe border
    truncates the mass evenly on both sides and does not pull the centre.
    """
    o = float(guess)
    per = np.full(len(profiles), np.nan)
    for _ in range(50):
        per = _windowed(profiles, base, o)
        if not np.isfinite(per).any():
            return o, per
        new = float(np.nanmean(per))
        if abs(new - o) < 1e-4:
            return new, per
        o = new
    return o, per


def _square_mass(gmap: np.ndarray, cy: float, cx: float, r: float) -> float:
    """Mass inside the square of half-side r centred on (cy, cx); pixels are unit squares, counted in part."""
    def cover(n, c):
        i = np.arange(n, dtype=float)
        return np.clip(np.minimum(i + 0.5, c + r) - np.maximum(i - 0.5, c - r), 0.0, 1.0)
    return float(cover(gmap.shape[0], cy) @ gmap @ cover(gmap.shape[1], cx))


def _half_side(gmap: np.ndarray, cy: float, cx: float, target: float, hi: float) -> float:
    """Smallest half-side r <= hi whose square holds at least `target` mass (hi if none does)."""
    lo = 0.0
    if _square_mass(gmap, cy, cx, hi) < target:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _square_mass(gmap, cy, cx, mid) < target else (lo, mid)
    return hi


def _erf(gmap: np.ndarray, cy: float, cx: float, mass: float) -> tuple[float, float]:
    """(side of the square centred on (cy, cx) holding `mass` of the mass, reach).

    The side counts the mass inside the largest centred square that fits in the probe. The reach is the
    half-side holding REACH_MASS of all the mass over that square's half-side: above 1 the probe truncates
    the map and the side is a lower bound.
    """
    h, w = gmap.shape
    radius = min(cy + 0.5, cx + 0.5, h - 0.5 - cy, w - 0.5 - cx)
    total = gmap.sum()
    if total <= 0 or radius <= 0:
        return float(min(h, w)), math.inf
    side = 2 * _half_side(gmap, cy, cx, mass * _square_mass(gmap, cy, cx, radius), radius)
    far = max(cy + 0.5, cx + 0.5, h - 0.5 - cy, w - 0.5 - cx)
    return float(side), _half_side(gmap, cy, cx, REACH_MASS * total, far) / radius


def _subset_se(parts: np.ndarray) -> float:
    """Standard error of a statistic from its values on interleaved subsets of the probe images."""
    parts = parts[np.isfinite(parts)]
    return float(np.std(parts, ddof=1) / np.sqrt(len(parts))) if len(parts) >= 2 else math.inf


# ---------------------------------------------------------------------------------- gradient probe


class _GradientProbe:
    """White-noise gradient maps of one layer's central units at one probe size, accumulated as they come.

    Pairs: a noise image and its point reflection about `axis` (an offset: unit (u, v) is reflected about
    axis + (u, v) * stride). The centre comes from the pairs about the current axis (pairs about any axis
    are unbiased; about the model's own centre of symmetry, very precise). Every map enters the ERF maps,
    kept in SUBSETS interleaved groups of draws for standard errors.
    """

    SUBSETS = 8

    def __init__(self, layer: str, size: int, stride: float, grid: tuple[int, int], axis: float):
        self.layer, self.stride = layer, float(stride)
        self.axis = round(2 * axis) / 2
        self.symmetric: bool | None = None  # whether the axis is a centre of symmetry (None: not looked for)
        mid = round(((size - 1) / 2 - axis) / stride)
        self.u0, self.v0 = int(np.clip(mid, 0, grid[0] - 1)), int(np.clip(mid, 0, grid[1] - 1))
        units = [(self.u0 + d, self.v0 + d) for d in (0, -1, 1)]  # a few central units, taken in turn
        self.units = [(u, v) for u, v in units if 0 <= u < grid[0] and 0 <= v < grid[1]]
        self.my: list[np.ndarray] = []  # per paired image: row profile (sum over columns) of its normalised map
        self.mx: list[np.ndarray] = []  # column profile
        self.unit: list[tuple[int, int]] = []
        self.pair: list[int] = []  # which pair
        self.axes: list[float] = []  # the axis of its pair
        self.pairs = self.draws = self.images = 0  # pairs, pairs and lone images, maps in the ERF maps
        self.maps = np.zeros((self.SUBSETS, size, size))  # normalised maps, aligned on unit (u0, v0)
        self._cache = None

    def pairs_at(self, axis: float) -> int:
        return len({p for p, a in zip(self.pair, self.axes) if a == axis})

    def set_axis(self, axis: float) -> None:
        self.axis = round(2 * axis) / 2
        self._cache = None

    def _add(self, unit: tuple[int, int], m: np.ndarray, subset: int) -> np.ndarray | None:
        """Normalise a map to unit mass and add it to the ERF maps (None when it has no mass)."""
        tot = m.sum()
        if not np.isfinite(tot) or tot <= 0:
            return None
        m = m / tot
        dy, dx = (int(round((w - w0) * self.stride)) for w, w0 in zip(unit, (self.u0, self.v0)))
        self.maps[subset % self.SUBSETS] += np.roll(m, (-dy, -dx), axis=(0, 1))
        self.images += 1
        return m

    def add_pair(self, unit: tuple[int, int], maps: np.ndarray, subset: int) -> None:
        """The maps of a noise image and its point reflection about the axis, for `unit`."""
        for m in maps:
            m = self._add(unit, m, subset)
            if m is not None:
                self.my.append(m.sum(1))
                self.mx.append(m.sum(0))
                self.unit.append(unit)
                self.pair.append(self.pairs)
                self.axes.append(self.axis)
        self.pairs += 1
        self.draws += 1
        self._cache = None

    def add_single(self, unit: tuple[int, int], m: np.ndarray, subset: int) -> None:
        """A lone noise image, for the ERF only (a pair's second map tells little new about the ERF)."""
        self._add(unit, m, subset)
        self.draws += 1

    def centre(self) -> tuple[float, float, float, float, dict]:
        """(offset, its standard error, row offset, column offset, {unit: [row, column] offset}), from the pairs
        about the current axis (all pairs while it has fewer than two)."""
        if self._cache is not None:
            return self._cache
        sel = np.array(self.axes) == self.axis
        if len(set(np.array(self.pair)[sel])) < 2:
            sel = np.ones(len(self.my), bool)
        if not sel.any():
            return self.axis, math.inf, math.nan, math.nan, {}
        units = [p for p, k in zip(self.unit, sel) if k]
        oy, per_y = _window_centre(np.stack(self.my)[sel], np.array([p[0] for p in units]) * self.stride, self.axis)
        ox, per_x = _window_centre(np.stack(self.mx)[sel], np.array([p[1] for p in units]) * self.stride, self.axis)
        per, pairs = (per_y + per_x) / 2, np.array(self.pair)[sel]
        means = np.array([np.nanmean(per[pairs == g]) for g in np.unique(pairs)])
        se = _subset_se(means) if len(means) else math.inf  # the pairs are independent: SE of their mean
        by_unit = {}
        for unit in self.units:
            k = np.array([p == unit for p in units])
            if k.any():
                by_unit[unit] = [float(np.nanmean(per_y[k])), float(np.nanmean(per_x[k]))]
        self._cache = ((oy + ox) / 2, se, oy, ox, by_unit)
        return self._cache

    def erf(self, mass: float) -> tuple[float, float, float, np.ndarray]:
        """(ERF side, its standard error, reach towards the probe border, the side in each subset)."""
        o = self.centre()[0]
        cy, cx = o + self.u0 * self.stride, o + self.v0 * self.stride
        side, reach = _erf(self.maps.sum(0), cy, cx, mass)
        parts = np.array([_erf(m, cy, cx, mass)[0] if m.sum() > 0 else np.nan for m in self.maps])
        return side, _subset_se(parts), reach, parts


def _mirror_scan(model, g: _GradientProbe, size: int, gen, norm, prefix, device) -> None:
    """Look for the model's centre of symmetry near g's centre estimate and make it g's axis.

    A noise image x and its point reflections R_c x about candidate centres c (half-pixel steps, half a
    stride either side of the estimate): where the model is symmetric about c, the map of R_c x is the
    reflection of the map of x. The best candidates are scored again on SCAN_IMAGES fresh images; the best
    is taken when it mismatches little, and far less than the typical candidate (g.symmetric). Otherwise
    the axis is the estimate: pairs about any axis are unbiased, only less precise.
    """
    est = g.centre()[0]
    half = max(SCAN_PX, g.stride / 2)
    cands = np.arange(round(2 * (est - half)), round(2 * (est + half)) + 1) / 2
    per_pass = max(1, BATCH_PIXELS // (size * size))

    def mismatch(offsets: np.ndarray) -> np.ndarray:
        x = torch.rand(3, size, size, generator=gen)
        twice = [(int(round(2 * (o + g.u0 * g.stride))), int(round(2 * (o + g.v0 * g.stride)))) for o in offsets]
        imgs = torch.stack([x] + [_reflect(x, ty, tx) for ty, tx in twice])
        maps = np.concatenate([_unit_maps(model, norm(imgs[i : i + per_pass]).to(device),
                                          {g.layer: [(g.u0, g.v0)] * len(imgs[i : i + per_pass])}, prefix)[g.layer]
                               for i in range(0, len(imgs), per_pass)])
        base = torch.from_numpy(maps[0])
        out = []
        for (ty, tx), mc in zip(twice, maps[1:]):
            mirrored = _reflect(base, ty, tx).numpy()
            out.append(np.abs(mc - mirrored).sum() / max((mc + mirrored).sum(), 1e-300))
        return np.array(out)

    screen = mismatch(cands)
    top = cands[np.argsort(screen)[:SCAN_TOP]]
    scores = np.mean([mismatch(top) for _ in range(SCAN_IMAGES)], 0)
    best = int(np.argmin(scores))
    g.symmetric = bool(scores[best] < min(SCAN_MISMATCH, SCAN_CONTRAST * np.median(screen)))
    g.set_axis(float(top[best]) if g.symmetric else est)


def _draw(model, gp: dict[str, _GradientProbe], pairs: dict[str, int], shared: tuple[list[str], int], size: int,
          gen, norm, prefix, device, counter: list[int]) -> None:
    """Draw pairs[layer] pairs about that layer's axis, and shared[1] lone noise images whose maps every layer
    in shared[0] takes, in passes of at most BATCH_PIXELS input pixels. counter[0] numbers the draws, so that
    the ERF subsets of the layers hold the same shared images."""
    per_pass = max(2, BATCH_PIXELS // (size * size))
    todo = [(l, 2) for l in gp for _ in range(pairs.get(l, 0))] + [(None, 1)] * (shared[1] if shared[0] else 0)
    turn = {l: g.draws for l, g in gp.items()}  # a layer's draws take its central units in turn
    while todo:
        chunk, n = [], 0
        while todo and (not chunk or n + todo[0][1] <= per_pass):
            chunk.append(todo.pop(0))
            n += chunk[-1][1]
        imgs, draws, picks = [], [], {l: [] for l in gp}
        for l, k in chunk:
            units = {}
            for layer in [l] if l is not None else shared[0]:
                units[layer] = gp[layer].units[turn[layer] % len(gp[layer].units)]
                turn[layer] += 1
            img = torch.rand(3, size, size, generator=gen)
            imgs.append(img)
            if k == 2:  # reflected about the unit's centre on the axis (twice it is an integer: whole pixels)
                g = gp[l]
                imgs.append(_reflect(img, *(int(round(2 * (g.axis + w * g.stride))) for w in units[l])))
            draws.append(units)
            for layer in gp:
                picks[layer] += [units.get(layer)] * k
        maps = _unit_maps(model, norm(torch.stack(imgs)).to(device), picks, prefix)
        i = 0
        for (l, k), units in zip(chunk, draws):
            for layer, unit in units.items():
                if k == 2:
                    gp[layer].add_pair(unit, maps[layer][i : i + 2], counter[0])
                else:
                    gp[layer].add_single(unit, maps[layer][i], counter[0])
            counter[0] += 1
            i += k


def _sample(model, gp: dict[str, _GradientProbe], arch: dict, depth: list[str], probe: int, input_size: int,
            gen, norm, prefix, device, mass: float, counter: list[int]) -> None:
    """Noise images until every layer's centre and ERF side are known to their target standard errors and
    successive ERFs are told apart, or the budget of input pixels is spent.

    Layers without the architecture probe first look for their centre of symmetry (their pairs' axis).
    Pairs serve the centre; then lone images shared by the layers serve the ERFs (successive layers' ERFs
    share their noise, so their difference is sharper than either).
    """
    budget = int(np.clip(PIXEL_BUDGET // (probe * probe), 2 * MIN_PAIRS, 2 * MAX_PAIRS))  # images per layer
    least = {l: MIN_PAIRS_ARCH if l in arch else MIN_PAIRS for l in gp}
    for layer, g in gp.items():
        if layer not in arch and g.my:
            _mirror_scan(model, g, probe, gen, norm, prefix, device)
    while True:
        erfs = {l: g.erf(mass) for l, g in gp.items() if g.images}
        room = {l: budget - g.images for l, g in gp.items() if g.my and g.images < budget}
        pairs, shared = {}, []
        for layer in room:
            g = gp[layer]
            if g.pairs_at(g.axis) < least[layer]:
                pairs[layer] = least[layer] - g.pairs_at(g.axis)
            elif g.centre()[1] > (SE_CHECK if layer in arch else SE_TARGET):
                pairs[layer] = max(1, g.pairs // 4)
            side, se = erfs[layer][:2]
            if side < input_size and se > max(ERF_SE[0], ERF_SE[1] * side):
                shared.append(layer)
        for a, b in zip(depth, depth[1:]):
            if a in room and b in room and min(erfs[a][0], erfs[b][0]) < input_size:
                diff = erfs[b][3] - erfs[a][3]  # over the subsets both layers have images in
                se = _subset_se(diff) if np.isfinite(diff).sum() >= 4 else math.hypot(erfs[a][1], erfs[b][1])
                if erfs[b][0] - erfs[a][0] < 2 * se:
                    shared += [a, b]
        pairs = {l: min(n, room[l] // 2) for l, n in pairs.items() if room[l] >= 2}
        shared = [l for l in depth if l in shared and l not in pairs]
        n_shared = min([max(4, gp[l].images // 4) for l in shared] + [room[l] for l in shared]) if shared else 0
        if not pairs and not n_shared:
            return
        _draw(model, gp, pairs, (shared, n_shared), probe, gen, norm, prefix, device, counter)


def _reach(gp: dict[str, _GradientProbe], mass: float) -> float:
    """How far the layers' averaged gradient mass reaches towards the probe border (the largest reach)."""
    return max([g.erf(mass)[2] for g in gp.values() if g.images] or [0.0])


# -------------------------------------------------------------------------------- architecture probe


def _linearised(model: nn.Module) -> nn.Module | None:
    """A copy with constant positive weights, identity activations and norms, and average- for max-pooling:
    a linear model with the same receptive fields. None unless every module is one of these standard layers
    (or a container of them without weights of its own)."""
    for m in model.modules():
        leaf = next(iter(m.children()), None) is None
        own = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if (leaf and not isinstance(m, _LINEAR_WEIGHTED + _LINEAR_IDENTITY + _LINEAR_KEEP + _LINEAR_MAXPOOL)
                or not leaf and own
                or isinstance(m, nn.MaxPool2d) and m.dilation not in (1, (1, 1))):
            return None
    lin = copy.deepcopy(model).float().eval()
    for name, m in list(lin.named_modules()):
        new = m
        if isinstance(m, _LINEAR_WEIGHTED):
            with torch.no_grad():
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, _LINEAR_IDENTITY):
            new = nn.Identity()
        elif isinstance(m, nn.MaxPool2d):
            new = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, count_include_pad=False)
        elif isinstance(m, nn.AdaptiveMaxPool2d):
            new = nn.AdaptiveAvgPool2d(m.output_size)
        if new is not m:
            parent, _, attr = name.rpartition(".")
            setattr(lin.get_submodule(parent) if parent else lin, attr, new)
    lin.requires_grad_(False)
    return lin


def _architecture_offsets(lin: nn.Module, layers: list[str], strides: dict[str, float],
                          grids: dict[str, tuple[int, int]], size: int, seed: int) -> dict[str, tuple[float, float]]:
    """(row, column) receptive-field centre offset of each layer, from the linearised model (the same image
    for every layer: the model is linear, the maps do not depend on it)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(lin.parameters()).device
    x = torch.rand(1, 3, size, size, generator=gen).expand(len(layers), -1, -1, -1).contiguous().to(device)
    units = {l: tuple(int(np.clip(round((size - 1) / 2 / strides[l]), 0, n - 1)) for n in grids[l]) for l in layers}
    maps = _unit_maps(lin, x, {l: [units[l] if i == j else None for j in range(len(layers))]
                               for i, l in enumerate(layers)}, None)
    out = {}
    for i, layer in enumerate(layers):
        m, (u, v), s = maps[layer][i], units[layer], strides[layer]
        if m.sum() > 0:
            out[layer] = (_window_centre(m.sum(1)[None], np.array([u * s]), (size - 1) / 2 - u * s)[0],
                          _window_centre(m.sum(0)[None], np.array([v * s]), (size - 1) / 2 - v * s)[0])
    return out


# ----------------------------------------------------------------------------------------- geometry


def measure_geometry(model: nn.Module, cfg: Config, probe_size: int = 384, seed: int = 0,
                     logger: logging.Logger | None = None) -> dict:
    """Stride, centre offset, crop side, feature-map shape and reliability of every analysed layer.

    The offset and ERF come from the probes described in the module docstring, on probe images of at most
    max(input size, `probe_size`) px (the model's own input size for token layers); for a convolutional
    network stride and offset do not depend on the input size. Deterministic for a given `seed`.
    Raises StageError when `crops.size_rule` is erf and a layer's ERF cannot be trusted.
    """
    lg = logger or log
    t0 = time.perf_counter()
    pre = preprocessing(model, cfg)
    size = pre.input_size
    model = model.float()
    device = next(model.parameters()).device
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
    norm = lambda x01: (x01 - mean) / std  # noqa: E731
    prefix = cfg.model.prefix_tokens if cfg.model.prefix_tokens is not None else prefix_tokens_of(model)
    layers = cfg.model.layers
    shapes = _feature_shapes(model, layers, size, prefix)
    # the plan checked this already unless weights bring their own input size
    check_geometry(cfg, size, {l: [c, h, w, "tokens" if tok else "feature_map"] for l, (c, h, w, tok) in shapes.items()})
    depth = list(shapes)  # the order the layers ran in
    fixed_size = any(tok for *_, tok in shapes.values())
    big = max(size, probe_size)
    probes = None if fixed_size else _probe_shapes(model, layers, (big, 2 * big), prefix)
    strides = {}
    for layer in layers:
        if probes is not None:
            # Growing the input by one stride adds one unit, whatever the padding: measure it over many units.
            strides[layer] = big / (probes[1][layer][1] - probes[0][layer][1])
        else:  # one input size (token layers): the grid covers the image
            strides[layer] = size / shapes[layer][1]

    # Architecture probe (standard conv nets): the receptive-field centre, whatever the weights.
    arch = {}
    if probes is not None and cfg.crops.center == "derived":
        lin = _linearised(model)
        if lin is not None:
            arch = _architecture_offsets(lin, layers, strides, {l: probes[0][l][1:3] for l in layers}, big, seed)
            del lin
    arch_offset = {l: (oy + ox) / 2 for l, (oy, ox) in arch.items()}

    # Gradient probe on the real model; the probe image grows until the mass stays clear of its border.
    gen = torch.Generator().manual_seed(seed)
    # (standard conv nets, with the architecture probe: their gradient spreads wide, start with the largest)
    probe = size if probes is None else big if arch else int(min(big, math.ceil(max(64.0, 8 * max(strides.values())))))
    axes = {l: arch_offset.get(l, (strides[l] - 1) / 2) for l in layers}  # reflection axes to start from
    counter = [0]
    while True:
        last = probes is None or probe >= big
        at_p = shapes if probe == size else probes[0] if probe == big else _feature_shapes(model, layers, probe, prefix)
        gp = {l: _GradientProbe(l, probe, strides[l], at_p[l][1:3], axes[l]) for l in layers}
        _draw(model, gp, {l: PILOT_PAIRS for l in layers}, ([], 0), probe, gen, norm, prefix, device, counter)
        reach = _reach(gp, cfg.crops.erf_mass)
        if last or reach <= 0.9 * REACH_OK:
            _sample(model, gp, arch_offset, depth, probe, size, gen, norm, prefix, device, cfg.crops.erf_mass,
                    counter)
            reach = _reach(gp, cfg.crops.erf_mass)
            if last or reach <= REACH_OK:
                break
        axes.update({l: g.centre()[0] for l, g in gp.items() if g.my and l not in arch})
        # the reach scales with the probe's half-side: the size it needs, at least a quarter more, and the
        # largest probe when the mass reaches the border (its reach is then underestimated)
        need = big if reach >= 0.9 else probe * reach / (0.9 * REACH_OK)
        probe = int(min(big, math.ceil(max(1.25 * probe, need) / 8) * 8))

    out = {"input_size": size, "layers": {}}
    problems = {}
    for layer in layers:
        c, hh, ww, tokens = shapes[layer]
        stride, g = strides[layer], gp[layer]
        goff, se, oy, ox, by_unit = g.centre()
        p_off, p_erf = [], []
        if not g.my:
            goff = se = math.nan
            p_off.append("no input gradient reaches its units (the layer does not depend on the input)")
            p_erf.append("no input gradient reaches its units")
        if cfg.crops.center == "half_stride" or not g.my and layer not in arch:
            offset, method = 0.5 * stride, "half_stride"
        elif layer in arch:
            offset, method = round(arch_offset[layer] * 2) / 2, "architecture"
            ay, ax = arch[layer]
            if abs(ay - ax) > AGREE_PX:
                p_off.append(f"the receptive-field centre differs between rows ({ay:.2f} px) and columns "
                             f"({ax:.2f} px): one offset cannot describe it")
            if g.my and abs(goff - arch_offset[layer]) > AGREE_PX + 2 * se:
                p_off.append(f"the model's gradient centre ({goff:.2f} +- {se:.2f} px) is "
                             f"{abs(goff - arch_offset[layer]):.1f} px from the receptive-field centre of the "
                             f"architecture ({arch_offset[layer]:.2f} px): the weights move where the units look")
        else:
            offset, method = round(goff * 2) / 2, "gradient"  # half-pixel resolution is all a crop needs
            if not se <= SE_LIMIT:
                p_off.append(f"the gradient centre is uncertain (+- {se:.2f} px after {len(g.my)} probe images): "
                             "the gradient depends strongly on the input")
            if abs(oy - ox) > AGREE_PX + 2 * math.sqrt(2) * se:
                p_off.append(f"the centre differs between rows ({oy:.2f} px) and columns ({ox:.2f} px)")
        erf, erf_se, reach, _ = g.erf(cfg.crops.erf_mass) if g.images else (math.nan, math.inf, math.inf, None)
        erf_side = int(min(probe, math.ceil(erf - 1e-6))) if g.images else None
        if g.images and erf_side < size:
            if reach > 1 and probes is not None:  # (a token layer's probe is the image itself: nothing is cut off)
                p_erf.append(f"the gradient mass reaches the border of the {probe} px probe image: the ERF side "
                             f"{erf_side} px is a lower bound")
            if erf_se > max(ERF_SE_LIMIT[0], ERF_SE_LIMIT[1] * erf):
                p_erf.append(f"the ERF side is uncertain ({erf:.1f} +- {erf_se:.1f} px after {g.images} "
                             "probe images)")
        crop = int(cfg.crops.size.get(layer, size)) if cfg.crops.size_rule == "fixed" else (erf_side or size)
        out["layers"][layer] = {
            "stride": float(stride), "offset": float(offset), "crop": int(min(crop, size)),
            "channels": int(c), "height": int(hh), "width": int(ww),
            "measured_offsets": [o for unit in g.units if unit in by_unit for o in by_unit[unit]],
            "erf_side": erf_side, "kind": "tokens" if tokens else "feature_map",
            "offset_method": method,
            "architecture_offset": arch_offset.get(layer),
            "gradient_offset": None if math.isnan(goff) else float(goff),
            "gradient_offset_se": float(se) if math.isfinite(se) else None,
            "symmetric_probe": g.symmetric,
            "erf": None if math.isnan(erf) else float(erf),
            "erf_se": float(erf_se) if math.isfinite(erf_se) else None,
            "probe_size": int(probe), "probe_images": int(g.images),
        }
        problems[layer] = (p_off, p_erf)

    # The ERF grows with depth: a deeper layer whose ERF is not larger than the one before is not measured right.
    for a, b in zip(depth, depth[1:]):
        ga, gb = out["layers"][a], out["layers"][b]
        if ga["erf"] is None or gb["erf"] is None or min(ga["erf_side"], gb["erf_side"]) >= size:
            continue  # both cover the whole image
        if gb["erf"] <= ga["erf"]:
            problems[a][1].append(f"the ERF does not grow with depth: {ga['erf']:.1f} px here, {gb['erf']:.1f} px "
                                  f"at the deeper layer {b}")
            problems[b][1].append(f"the ERF does not grow with depth: {gb['erf']:.1f} px here, {ga['erf']:.1f} px "
                                  f"at the shallower layer {a}")

    for layer in layers:
        g, (p_off, p_erf) = out["layers"][layer], problems[layer]
        g["offset_reliable"], g["erf_reliable"] = not p_off, not p_erf
        g["reliable"] = not p_off and not p_erf
        g["warning"] = "; ".join(p_off + [f"ERF: {p}" for p in p_erf]) or None
        lg.info("layer %s: stride %g, offset %g px (%s; gradient %s +- %s), ERF side %s px (%g%% of the mass), "
                "probe %d px x %d images", layer, g["stride"], g["offset"], g["offset_method"],
                _fmt(g["gradient_offset"]), _fmt(g["gradient_offset_se"]), g["erf_side"],
                100 * cfg.crops.erf_mass, g["probe_size"], g["probe_images"])
        if not g["reliable"]:
            lg.warning("the geometry of layer %s cannot be trusted: %s", layer, g["warning"])
    out["reliable"] = all(g["reliable"] for g in out["layers"].values())
    lg.info("geometry measured in %.1f s", time.perf_counter() - t0)

    if cfg.crops.size_rule == "erf":
        bad = [l for l in layers if problems[l][1]]
        if bad:
            raise StageError(
                f"crops.size_rule is erf, but the effective receptive field of layer '{bad[0]}' cannot be trusted: "
                f"{'; '.join(problems[bad[0]][1])}. Set its crop side explicitly: crops: {{size_rule: fixed, "
                f"size: {{{bad[0]}: <side in input pixels>}}}}"
                + (f" (the ERF of {bad[1:]} cannot be trusted either)" if bad[1:] else ""))
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def geometry_stage(job) -> None:
    """Rule geometry: stride, centre offset and crop side of every analysed layer, and whether to trust them."""
    write_json(measure_geometry(build_model(job.cfg).to(job.device), job.cfg, logger=job.logger()),
               job.output.geometry)
