"""Neuron embeddings: each top site of a channel as the model itself sees it (Foote 2024).

A. Foote, "Tackling Polysemanticity with Neuron Embeddings", arXiv:2411.08166 (2024): the neuron
embedding of an input is "the element-wise product of the vector representation that the neuron
receives and the neuron's input weights". Its sum (plus the bias) is the neuron's pre-activation,
so it splits the activation into what each input contributed; no outside encoder is involved.

Here a channel's *input map* is the last linear map that computes it: a Conv2d (the embedding of
output unit (u, v) is the k x k input window the kernel reads there times weight[c], flattened to
in_channels * k * k values) or a Linear over tokens or channels-last maps (input vector times
weight[c]). Which module that is, per analysed layer (`resolve_input_map`):
  1. `neuron_embeddings.module` in the config, when the layer is listed there;
  2. the model's own declaration, an attribute `polypsi_input_maps = {layer: module name}`
     (the planted world declares its planted readout);
  3. derived: of the Conv2d and Linear modules called inside the layer's module during a forward
     pass, those producing the layer's channels on the layer's grid; the last one called, when
     every other one is upstream of it (its input depends on their outputs). Two such maps side by
     side (a ResNet block's last conv and its downsampling shortcut) are ambiguous: the error says
     which module to name in the config.
What the input map leaves out (what comes after it or beside it) is not in the embedding: for a
torchvision ResNet stage (`layer3`) the input map is the last block's last conv (`layer3.<last>.conv3`,
or `conv2` for basic blocks); the batch norm after it scales all of a channel's terms by one factor
and adds a constant, which changes no cosine between the channel's embeddings, but the residual
path (the block's input added after the norm) and the final ReLU are left out. For a ViT block it
is the MLP's last Linear; the attention branch's output, added through the residual path, is left
out. A site's (u, v) is on the layer's output grid, and the input map must produce the same grid
(checked when it is resolved), so (u, v) is also the map's output unit; token sites are mapped to
token indices as `polypsi.models.as_grid` does (prefix tokens first, then the grid row by row).

The model runs only on the images of the mined top sites, in batches, in fp32, and each forward
pass stops at the input map (nothing after it is computed).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .crops import load_image
from .errors import StageError
from .io import read_table, write_table
from .models import load_model, prefix_tokens_of, preprocessing, token_grid
from .runtime import Progress, get_logger
from .shards import full_batch

COLUMNS = ["channel", "rank"]  # plus the `embedding` column (fixed-size list of float32)


@dataclass(frozen=True)
class InputMap:
    """The module whose input times a channel's weights is the layer's neuron embedding."""

    layer: str
    module: str  # a name in model.named_modules()
    kind: Literal["conv", "linear"]
    source: Literal["config", "model", "derived"]
    dim: int  # length of one neuron embedding
    tokens: bool  # the layer is a token sequence (its sites are tokens after `prefix` ones)
    prefix: int  # tokens before the patch grid (token layers; 0 otherwise)
    side: int  # side of the token grid (token layers; 0 otherwise)


def _hint(layer: str) -> str:
    return f"set `neuron_embeddings: {{module: {{{layer}: <module name>}}}}` in the config"


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _tokens_batch_first(t: torch.Tensor, batch: int) -> torch.Tensor:
    """[B, N, C] from a token tensor that may be sequence-first [N, B, C] (transformers without batch_first)."""
    return t.transpose(0, 1) if t.shape[0] != batch and t.shape[1] == batch else t


def _layout(t: torch.Tensor, conv: bool, batch: int) -> tuple[int, tuple[int, ...]]:
    """(channels, grid) of a module's output: grid (H, W) of a map, (N,) of a token sequence."""
    if conv:
        return t.shape[1], tuple(t.shape[2:])
    if t.dim() == 3:
        return t.shape[-1], (_tokens_batch_first(t, batch).shape[1],)
    return t.shape[-1], tuple(t.shape[1:-1])  # channels-last maps [B, H, W, C]; [B, C] has no grid


@dataclass
class _Call:
    name: str
    input_fn: object  # autograd node of the input (what it depends on)
    output_fn: object  # autograd node of the output
    channels: int
    grid: tuple[int, ...]


def _upstream(node) -> set:
    """Every autograd node `node` depends on (itself included)."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        stack.extend(f for f, _ in getattr(n, "next_functions", ()))
    return seen


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_input_map(model: nn.Module, layer: str, input_size: int, module: str | None = None,
                      prefix_tokens: int | None = None) -> InputMap:
    """The input map of `layer` (see the module docstring); `module` names it explicitly (the config's).

    One probe forward pass of two random images of `input_size` px, with autograd on to see which
    module's output feeds which. `prefix_tokens`: as model.prefix_tokens (None = the model's own,
    else N minus the largest square).
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        raise StageError(f"layer {layer} is not a module of the model")
    source = "config"
    if module is None:
        declared = getattr(model, "polypsi_input_maps", None) or {}
        module, source = declared.get(layer), "model"
    if module is not None and module not in modules:
        close = difflib.get_close_matches(module, list(modules), n=3)
        raise StageError(f"neuron embeddings of layer {layer}: the {source}'s input map {module!r} is not a module "
                         f"of the model{f'; close names: {close}' if close else ''}")
    calls: list[_Call] = []
    seen_layer = {}

    def record(name):
        def hook(mod, inp, out):
            conv = isinstance(mod, nn.Conv2d)
            ch, grid = _layout(out, conv, 2)
            calls.append(_Call(name, inp[0].grad_fn if inp else None, out.grad_fn, ch, grid))

        return hook

    def record_layer(_mod, _inp, out):
        seen_layer.setdefault("out", _first(out))

    hooks = [m.register_forward_hook(record(n)) for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks.append(modules[layer].register_forward_hook(record_layer))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, input_size, input_size, generator=g).to(_device(model)).requires_grad_(True)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if "out" not in seen_layer:
        raise StageError(f"layer {layer} produced no output in a forward pass")
    out = seen_layer["out"]
    if out.dim() not in (3, 4):
        raise StageError(f"layer {layer} outputs shape {tuple(out.shape)}; neuron embeddings need feature maps "
                         "[B, C, H, W] or token sequences [B, N, C]")
    channels, grid = _layout(out, out.dim() == 4, 2)
    tokens = out.dim() == 3
    prefix, side = token_grid(grid[0], layer, prefix_tokens) if tokens else (0, 0)
    what = f"its {channels} channels on its {'x'.join(map(str, grid))} {'token sequence' if tokens else 'grid'}"

    if module is None:  # derive: the last map inside the layer that produces the layer's channels on its grid
        source = "derived"
        inside = [c for c in calls if c.name == layer or c.name.startswith(layer + ".")]
        fits = [c for c in inside if (c.channels, c.grid) == (channels, grid)]
        if not fits:
            raise StageError(
                f"neuron embeddings of layer {layer}: no Conv2d or Linear module inside it produces {what}, so its "
                f"input map (the last linear map computing its channels) cannot be derived; {_hint(layer)}"
            )
        last = fits[-1]
        before = _upstream(last.input_fn)
        beside = [c.name for c in fits if c.name != last.name and c.output_fn not in before]
        if beside:
            names = ", ".join(dict.fromkeys([*beside, last.name]))
            raise StageError(
                f"neuron embeddings of layer {layer}: its input map is ambiguous: {names} all produce {what}, and "
                f"{last.name}, the last of them, does not read the others' output (maps side by side, as a block's "
                f"last conv and its shortcut conv); {_hint(layer)}, naming the one whose input the channels should "
                "be read from"
            )
        module = last.name
    mod = modules[module]
    if not isinstance(mod, (nn.Conv2d, nn.Linear)):
        raise StageError(f"neuron embeddings of layer {layer}: {module} is a {type(mod).__name__}; an input map "
                         f"must be a Conv2d or a Linear module; {_hint(layer)}")
    if isinstance(mod, nn.Conv2d) and mod.groups != 1:
        raise StageError(f"neuron embeddings of layer {layer}: {module} is a grouped convolution (groups="
                         f"{mod.groups}), whose channels read only part of the input; name a Conv2d with groups=1 "
                         f"or a Linear: {_hint(layer)}")
    mine = [c for c in calls if c.name == module]
    if len(mine) != 1:
        raise StageError(f"neuron embeddings of layer {layer}: {module} runs {len(mine)} times in a forward pass, so "
                         f"its input at a site is not one thing; {_hint(layer)}")
    if (mine[0].channels, mine[0].grid) != (channels, grid):
        raise StageError(
            f"neuron embeddings of layer {layer}: {module} produces {mine[0].channels} channels on a "
            f"{'x'.join(map(str, mine[0].grid)) or 'site-less'} grid, but the layer has {what}: a site's (u, v) "
            f"would not be the map's output unit; {_hint(layer)}"
        )
    if isinstance(mod, nn.Conv2d):
        kind, dim = "conv", mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
    else:
        kind, dim = "linear", mod.in_features
    return InputMap(layer, module, kind, source, dim, tokens, prefix, side)


def conv_windows(x: torch.Tensor, conv: nn.Conv2d, b: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The input windows [S, in, kh, kw] that `conv` reads for its output units (b, u, v) of input x [B, in, H, W].

    Padded as the conv pads (its padding mode, and 'same' padding's split), then unit (u, v) reads
    padded rows u * stride + i * dilation and columns likewise.
    """
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    # _reversed_padding_repeated_twice is how the conv itself pads (it resolves 'same' too): (left, right, top, bottom)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    rows = u[:, None] * sh + torch.arange(kh, device=x.device) * dh  # [S, kh]
    cols = v[:, None] * sw + torch.arange(kw, device=x.device) * dw  # [S, kw]
    # Advanced indices around a slice: the indexed dimensions come first, [S, kh, kw, in].
    return xp[b[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def site_inputs(x: torch.Tensor, imap: InputMap, b: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                batch: int) -> torch.Tensor:
    """Input vectors [S, in] of a Linear input map at sites (b, u, v) (x: its input, `batch` images)."""
    if x.dim() == 4:  # channels-last map [B, H, W, in]
        return x[b, u, v]
    if x.dim() == 3 and imap.tokens:  # token sequence: as_grid's order
        return _tokens_batch_first(x, batch)[b, imap.prefix + u * imap.side + v]
    raise StageError(f"neuron embeddings of layer {imap.layer}: {imap.module}'s input has shape {tuple(x.shape)}; "
                     f"a Linear input map must read tokens [B, N, in] or channels-last maps [B, H, W, in]")


def _index(t, device) -> torch.Tensor:
    """An index tensor from a tensor, array or list (arrays copied: pandas hands out read-only ones)."""
    if isinstance(t, torch.Tensor):
        return t.to(device=device, dtype=torch.long)
    return torch.as_tensor(np.array(t, dtype=np.int64), device=device)


def embed_sites(mod: nn.Module, imap: InputMap, x: torch.Tensor, b, u, v, channels, batch: int) -> torch.Tensor:
    """Neuron embeddings [S, dim] of the sites (b, u, v) of `channels` from the input map's input x."""
    b, u, v, channels = (_index(t, x.device) for t in (b, u, v, channels))
    if imap.kind == "conv":
        win = conv_windows(x, mod, b, u, v)
        return (win * mod.weight[channels]).flatten(1)
    return site_inputs(x, imap, b, u, v, batch) * mod.weight[channels]


class _Stop(Exception):
    """Ends a forward pass once the input map's input is captured (nothing after it is needed)."""


def capture_input(model: nn.Module, module: str, x: torch.Tensor) -> torch.Tensor:
    """The input of `module` when `model` runs on the (normalised) batch x; the pass stops there."""
    got = {}

    def hook(_mod, args):
        got["x"] = args[0]
        raise _Stop

    h = dict(model.named_modules())[module].register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if "x" not in got:
        raise StageError(f"{module} did not run in the forward pass")
    return got["x"]


def neuron_embeddings(model: nn.Module, imap: InputMap, sites: pd.DataFrame, paths: dict[int, str], input_size: int,
                      mean, std, batch_size: int, log=None) -> np.ndarray:
    """Neuron embeddings [len(sites), dim] (float32) of `sites` (columns channel, image_id, u, v).

    The model runs once per image of the sites, `batch_size` images at a time; `paths` maps
    image_id to its file, read at `input_size` and normalised with `mean`/`std`.
    """
    log = log or get_logger("polypsi.neuron_embeddings")
    mod = dict(model.named_modules())[imap.module]
    device = _device(model)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    images = np.unique(sites["image_id"].to_numpy())
    out = np.zeros((len(sites), imap.dim), np.float32)
    prog = Progress(len(images), "images", log)
    for i in range(0, len(images), batch_size):
        ids = images[i : i + batch_size]
        x = torch.stack([load_image(paths[int(j)], input_size) for j in ids]).to(device)
        x = (full_batch(x, batch_size) - mean_t) / std_t
        inp = capture_input(model, imap.module, x).float()
        rows = np.flatnonzero(np.isin(sites["image_id"].to_numpy(), ids))
        s = sites.iloc[rows]
        b = np.searchsorted(ids, s["image_id"].to_numpy())
        with torch.no_grad():
            z = embed_sites(mod, imap, inp, b, s["u"].to_numpy(), s["v"].to_numpy(), s["channel"].to_numpy(), len(x))
        out[rows] = z.float().cpu().numpy()
        prog.update(len(ids))
    return out


def layer_neuron_embeddings(cfg: Config, layer: str, topk: pd.DataFrame, dataset: pd.DataFrame, device,
                            log=None) -> tuple[pd.DataFrame, np.ndarray, InputMap]:
    """The (channel, rank) rows of a layer's top-K table, their neuron embeddings and the input map used."""
    log = log or get_logger("polypsi.neuron_embeddings")
    model = load_model(cfg, device)  # fp32, whatever mining.precision says: embeddings are exact products
    pre = preprocessing(model, cfg)
    prefix = cfg.model.prefix_tokens if cfg.model.prefix_tokens is not None else prefix_tokens_of(model)
    imap = resolve_input_map(model, layer, pre.input_size, cfg.neuron_embeddings.module.get(layer), prefix)
    log.info("layer %s: input map %s (%s, %s), embeddings of %d values; %d sites on %d images, on %s",
             layer, imap.module, imap.kind, imap.source, imap.dim, len(topk), topk["image_id"].nunique(), device)
    paths = dict(zip(dataset["image_id"].astype(int), dataset["path"]))
    z = neuron_embeddings(model, imap, topk, paths, pre.input_size, pre.mean, pre.std,
                          cfg.neuron_embeddings.batch_size, log)
    return topk[COLUMNS].reset_index(drop=True), z, imap


def neuron_embeddings_stage(job) -> None:
    """Rule neuron_embeddings: one layer's neuron embeddings of its merged top-K sites."""
    cfg, log = job.cfg, job.logger("polypsi.neuron_embeddings")
    rows, z, _ = layer_neuron_embeddings(cfg, job.wildcard("layer"), read_table(job.input.topk),
                                         read_table(job.input.dataset), job.device, log)
    write_table(rows, job.output.embeddings, embeddings={"embedding": z})
    log.info("done")
