"""Layer geometry: where a feature-map site looks in the input.

The theoretical receptive field of deep ResNet layers is larger than the image, so the
crop side is a documented rule (`crops.size_rule`): a configured size per layer, or the
square that holds a given share of the measured input-gradient mass (effective RF).
The centre of a site is measured, not assumed: for a grid of interior units we take the
centre of mass of |d activation / d input| and fit centre = offset + index * stride.
Token layers (transformer blocks, [B, N, C]) take one input size: their sites are the patch
tokens, the stride is the input size over the patch grid's side, and the centre is measured
the same way at the model's own input size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import Config
from .io import write_json
from .modelfit import check_geometry
from .models import as_grid, build_model, preprocessing, prefix_tokens_of


def _grad_maps(model: nn.Module, layer: str, input_size: int, units: list[tuple[int, int]], mean, std,
               prefix: int | None = None, n_images: int = 4, seed: int = 0) -> list[np.ndarray]:
    """|d sum_c A[c,u,v] / d input| summed over colour channels and a few noise images, per unit."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x01 = torch.rand(n_images, 3, input_size, input_size, generator=g)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    x = ((x01 - m) / s).to(device).requires_grad_(True)
    store = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            model(x)
            a = as_grid(store["a"], layer, prefix, n_images)
            maps = []
            for u, v in units:
                (grad,) = torch.autograd.grad(a[:, :, u, v].sum(), x, retain_graph=True)
                maps.append(grad.abs().sum(dim=(0, 1)).float().cpu().numpy())
    finally:
        h.remove()
    return maps


def _erf_side(gmap: np.ndarray, cy: float, cx: float, mass: float) -> int:
    total = gmap.sum()
    if total <= 0:
        return gmap.shape[0]
    yy, xx = np.mgrid[0 : gmap.shape[0], 0 : gmap.shape[1]]
    cheb = np.maximum(np.abs(yy - cy), np.abs(xx - cx)).ravel()
    order = np.argsort(cheb, kind="stable")
    cum = np.cumsum(gmap.ravel()[order]) / total
    radius = cheb[order][np.searchsorted(cum, mass)]
    return int(min(gmap.shape[0], 2 * np.ceil(radius) + 1))


def _feature_shapes(model: nn.Module, layers: list[str], size: int,
                    prefix: int | None = None) -> dict[str, tuple[int, int, int, bool]]:
    """(channels, height, width, is a token layer) of every layer's output for a size x size input, in one pass."""
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


def measure_geometry(model: nn.Module, cfg: Config, probe_size: int = 384) -> dict:
    """Stride, centre offset, crop side and feature-map shape of every analysed layer.

    The stride is the input growth that adds one feature-map unit (probe and twice the probe).
    The offset is measured on a probe image (at least `probe_size` px) around its central
    units, where the image border does not truncate the gradient; for a convolutional network
    stride and offset do not depend on the input size.
    """
    pre = preprocessing(model, cfg)
    size = pre.input_size
    model = model.float()
    prefix = cfg.model.prefix_tokens if cfg.model.prefix_tokens is not None else prefix_tokens_of(model)
    out = {"input_size": size, "layers": {}}
    layers = cfg.model.layers
    shapes = _feature_shapes(model, layers, size, prefix)
    # the plan checked this already unless weights bring their own input size
    check_geometry(cfg, size, {l: [c, h, w, "tokens" if tok else "feature_map"] for l, (c, h, w, tok) in shapes.items()})
    fixed_size = any(tok for *_, tok in shapes.values())
    probes = None if fixed_size else _probe_shapes(model, layers, (max(size, probe_size), 2 * max(size, probe_size)), prefix)
    for layer in layers:
        c, hh, ww, tokens = shapes[layer]
        if probes is not None:
            # Growing the input by one stride adds one unit, whatever the padding: measure it over many units.
            probe = max(size, probe_size)
            ph, ph2 = probes[0][layer][1], probes[1][layer][1]
            stride = pstride = probe / (ph2 - ph)
        else:  # one input size (token layers): the grid covers the image
            probe, ph = size, hh
            stride = pstride = size / hh
        mid = ph // 2
        units = [(i, i) for i in sorted({max(mid - 1, 0), mid})]
        maps = _grad_maps(model, layer, probe, units, pre.mean, pre.std, prefix)
        offsets, sides = [], []
        yy, xx = np.mgrid[0:probe, 0:probe]
        for (u, v), gm in zip(units, maps):
            tot = gm.sum()
            if tot <= 0:
                continue
            cy, cx = (gm * yy).sum() / tot, (gm * xx).sum() / tot
            offsets += [cy - u * pstride, cx - v * pstride]
            sides.append(_erf_side(gm, cy, cx, cfg.crops.erf_mass))
        if cfg.crops.center == "half_stride" or not offsets:
            offset = 0.5 * stride
        else:
            offset = round(float(np.mean(offsets)) * 2) / 2  # half-pixel resolution is all a crop needs
        erf_side = int(np.median(sides)) if sides else None
        crop = erf_side if (cfg.crops.size_rule == "erf" and erf_side) else int(cfg.crops.size.get(layer, size))
        out["layers"][layer] = {
            "stride": float(stride), "offset": float(offset), "crop": int(min(crop, size)),
            "channels": int(c), "height": int(hh), "width": int(ww),
            "measured_offsets": [float(o) for o in offsets], "erf_side": erf_side,
            "kind": "tokens" if tokens else "feature_map",
        }
    return out


def geometry_stage(job) -> None:
    """Rule geometry: stride, centre offset and crop side of every analysed layer."""
    write_json(measure_geometry(build_model(job.cfg), job.cfg), job.output.geometry)
