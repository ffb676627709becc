"""The model under study: a small ResNet-like CNN whose channels are wired to known concepts.

Stages (all named modules, as in torchvision's ResNet):
  stem    undo the ImageNet normalisation, resample by the fixed factor that maps the
          configured input size back to the rendered size (so the network stays fully
          convolutional: a larger input gives larger maps), and compute one
          colour-membership map per concept colour (a smooth function of chromaticity,
          so it tolerates shade).
  layer1  shape detectors: matched filters (template inside minus a surrounding band) of
          each concept's shape over several scales and rotations, applied to the
          concept's colour map; max over pose, larger scales weigh a little more. Stride 2.
  layer2  2x2 max-pool and competition between concepts: concept evidence at stride 4.
  layer3  planted channels at stride 4: monosemantic (one concept), polysemantic (max over
          2-3 concepts), dead. A residual branch (3x3 conv with small random weights,
          `world.crosstalk`) leaks a little of every concept into every live channel.
  layer4  the same at stride 8, reading layer3's one-concept detectors.
  avgpool, fc  class logits (each class = its main concept).
Nothing is trained: all weights follow from the world config, so the model is exactly
reproducible and its ground truth (`polypsi.world.truth`) is known by construction.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polypsi.config import IMAGENET_MEAN, IMAGENET_STD, WorldConfig
from polypsi.world.concepts import COLOURS, SYMMETRY, shape_sdf
from polypsi.world.render import MAIN_RADIUS, SHADE, draw_scene, render_concept, sample_scene
from polypsi.world.spec import STREAM_MODEL, world_spec
from polypsi.world.truth import TEMPLATE_RADII, plan_channels, scale_gain

ROTATION_STEP = math.radians(30)  # largest template rotation step within a symmetry period
LEAK = 0.01  # leaky ReLU slope: keeps gradients alive for geometry probes; dead channels stay <= 0
THRESHOLD = {"layer3": 0.4, "layer4": 0.2}
SIGMA_CHROMA = 0.17
INHIBITION = 0.7
HULL_RADIUS = {"ring": 1.0, "cross": 1.0, "star": 1.0, "crescent": 1.0}
CALIBRATION_INSTANCES = 8
BALANCE_SCENES = 200
BALANCE_QUANTILE = 0.85


def _chroma(rgb: torch.Tensor, dim: int) -> torch.Tensor:
    return rgb / (rgb.amax(dim, keepdim=True) + 1e-3)


class ColourStem(nn.Module):
    """[B,3,S,S] normalised images -> [B,P,S/f,S/f] membership of each pixel in P palette colours.

    f = input_size / image_size: an input of the configured size is brought back to the
    resolution the world was rendered at, where the shape templates have their scale.
    """

    def __init__(self, colours: list[tuple[float, float, float]], factor: float, mean, std):
        super().__init__()
        self.factor = float(factor)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        pal = torch.tensor(colours, dtype=torch.float32)
        self.register_buffer("palette", _chroma(pal, 1).view(-1, 3, 1, 1))  # 4-D: channels_last-safe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.std + self.mean
        if self.factor != 1.0:
            size = (max(1, round(x.shape[-2] / self.factor)), max(1, round(x.shape[-1] / self.factor)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.factor > 1)
        x = x.clamp(0, 1)
        mx, mn = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
        sat = (mx - mn) / (mx + 1e-3)
        d2 = ((_chroma(x, 1).unsqueeze(1) - self.palette.unsqueeze(0)) ** 2).sum(2)
        # Grey (unsaturated) and dark pixels have no reliable hue: they belong to no colour.
        gate = torch.sigmoid((sat - 0.42) / 0.05) * torch.sigmoid((mx - 0.2) / 0.04)
        return torch.exp(-d2 / (2 * SIGMA_CHROMA**2)) * gate


def _template(shape: str, radius: float, theta: float, half: int) -> np.ndarray:
    """Matched filter: +1/area inside the shape, -1/area in a band around it (zero mean)."""
    band = max(1.5, 0.4 * radius)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    sdf = shape_sdf(shape, xx, yy, radius, theta)
    inside = np.clip(0.5 - sdf, 0, 1)
    # Negative region: a band around the shape, plus its concavities (the bite of a
    # crescent, the notches of a star, the corners of a cross), approximated by the
    # circumscribed disc; without them a solid blob of the right colour fits too well.
    outer = sdf - band
    if shape in HULL_RADIUS:
        outer = np.minimum(outer, np.hypot(xx, yy) - HULL_RADIUS[shape] * radius)
    ring = np.clip(np.clip(0.5 - outer, 0, 1) - inside, 0, 1)
    return inside / inside.sum() - ring / ring.sum()


class ShapeBank(nn.Module):
    """Per-concept shape detectors on the concept's colour map (layer1), stride 2.

    One template per (concept, rotation, scale), cross-correlated with the concept's
    colour map; a concept's response is the max over its rotations and scales. Small
    templates run on the full map (output sampled at stride 2), large ones on the 2x
    average-pooled map. The correlation runs through the FFT: equal to F.conv2d with
    zero padding, and several times faster on CPU for kernels this large.
    """

    def __init__(self, concepts, colour_index: list[int], image_size: int):
        super().__init__()
        self.n = len(concepts)
        sc = image_size / 64.0
        owner, rotations = [], []
        for i, c in enumerate(concepts):
            n_rot = self._rotations(c.shape)
            owner += [i] * n_rot
            rotations += [q * 2 * math.pi / max(SYMMETRY[c.shape], 1) / n_rot for q in range(n_rot)]
        self.register_buffer("source", torch.tensor([colour_index[i] for i in owner], dtype=torch.long))
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.long))
        self.levels = [0 if r < 8 else 1 for r in TEMPLATE_RADII]
        self.gains = [scale_gain(r) for r in TEMPLATE_RADII]
        for s, (r, lv) in enumerate(zip(TEMPLATE_RADII, self.levels)):
            rr = r * sc / 2**lv
            half = int(math.ceil(1.2 * rr + max(1.5, 0.4 * rr) + 1))
            kernels = np.stack([_template(concepts[i].shape, rr, th, half) for i, th in zip(owner, rotations)])
            self.register_buffer(f"kernel{s}", torch.tensor(kernels, dtype=torch.float32))
        self._spectra: dict = {}  # (scale, fft height, fft width, device) -> kernel spectrum

    @staticmethod
    def _rotations(shape: str) -> int:
        order = SYMMETRY[shape]
        return 1 if order == 0 else int(math.ceil(2 * math.pi / order / ROTATION_STEP))

    def _spectrum(self, s: int, nh: int, nw: int) -> torch.Tensor:
        k = getattr(self, f"kernel{s}")
        key = (s, nh, nw, k.device)
        if key not in self._spectra:
            # Cross-correlation = convolution with the mirrored kernel, centred on index 0.
            half = k.shape[-1] // 2
            full = torch.zeros(k.shape[0], nh, nw, device=k.device)
            off = -torch.arange(-half, half + 1, device=k.device)
            full[:, (off % nh)[:, None], (off % nw)[None, :]] = k
            self._spectra[key] = torch.fft.rfft2(full)
        return self._spectra[key]

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        m = m.contiguous()
        maps = (m, F.avg_pool2d(m, 2))
        out_h, out_w = (m.shape[-2] + 1) // 2, (m.shape[-1] + 1) // 2
        best = None
        for lv in (0, 1):
            x = maps[lv]
            scales = [s for s, level in enumerate(self.levels) if level == lv]
            # Zero padding of one kernel half-width keeps the circular correlation exact.
            half = max(getattr(self, f"kernel{s}").shape[-1] // 2 for s in scales)
            nh, nw = _fast_len(x.shape[-2] + half), _fast_len(x.shape[-1] + half)
            spec = torch.fft.rfft2(x, s=(nh, nw)).index_select(1, self.source)  # one colour per template
            for s in scales:
                y = torch.fft.irfft2(spec * self._spectrum(s, nh, nw), s=(nh, nw))
                y = y[..., : x.shape[-2] : 2, : x.shape[-1] : 2] if lv == 0 else y[..., : x.shape[-2], : x.shape[-1]]
                y = F.pad(y, (0, out_w - y.shape[-1], 0, out_h - y.shape[-2])) * self.gains[s]
                best = y if best is None else torch.maximum(best, y)
        # Max over each concept's rotations.
        return torch.stack([best[:, self.owner == i].amax(1) for i in range(self.n)], 1)


def _fast_len(n: int) -> int:
    """Smallest length >= n with only factors 2, 3, 5 (fast FFT sizes)."""
    while True:
        k = n
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return n
        n += 1


class PlantedReadout(nn.Conv2d):
    """The planted readout: a 1x1 convolution whose sum over inputs is a max over the planted ones.

    Channel c's terms are w_ci * h_i, as in a 1x1 convolution with weights [C, n_in] (zero
    where not planted); a planted channel takes their max over its planted inputs i instead of
    their sum, and a dead channel (no planted input) gives 0. Being a Conv2d, it exposes the
    weights and the input that neuron embeddings multiply (polypsi.neuron_embeddings).
    """

    def __init__(self, readout: torch.Tensor):
        super().__init__(readout.shape[1], readout.shape[0], 1, bias=False)
        self.weight.data.copy_(readout[:, :, None, None])
        self.weight.requires_grad_(False)
        self.register_buffer("planted", readout != 0)
        self.register_buffer("live", self.planted.any(1).view(1, -1, 1, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Max over the planted inputs only (so gradients reach them even when all are negative).
        prod = self.weight[:, :, 0, 0][None, :, :, None, None] * h[:, None]
        planted = prod.masked_fill(~self.planted[None, :, :, None, None], float("-inf")).amax(2)
        return torch.where(self.live, planted, torch.zeros_like(planted))


class PlantedLayer(nn.Module):
    """Planted channels: act(max_i w_ci * h_i + branch(relu(h)) - threshold_c), optional 2x2 max-pool first.

    The max runs over channel c's planted inputs i (`readout`, weights [C, n_in, 1, 1]); dead
    channels have none (and a high threshold). `branch` is the residual 3x3 conv carrying the
    weak random crosstalk.
    """

    def __init__(self, readout: torch.Tensor, crosstalk: torch.Tensor, threshold: torch.Tensor, stride: int):
        super().__init__()
        self.stride = stride
        self.readout = PlantedReadout(readout)
        self.branch = nn.Conv2d(readout.shape[1], readout.shape[0], 3, padding=1, bias=False)
        self.branch.weight.data.copy_(crosstalk)
        self.branch.weight.requires_grad_(False)
        self.register_buffer("threshold", threshold.view(1, -1, 1, 1))

    @property
    def shortcut(self) -> torch.Tensor:
        """The planted readout weights [C, n_in] (zero where not planted)."""
        return self.readout.weight[:, :, 0, 0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            h = F.max_pool2d(h, self.stride)
        return F.leaky_relu(self.readout(h) + self.branch(F.relu(h)) - self.threshold, LEAK)


class Competition(nn.Module):
    """layer2: 2x2 max-pool, then competition between concepts at each place.

    Shape detectors of one colour overlap (a crescent template fits inside a star), so
    each concept is first scaled so that its typical instance scores 1, then inhibited
    by the strongest other concept at the same place, then scaled to peak near 1 again.
    """

    def __init__(self, n: int, inhibition: float):
        super().__init__()
        self.inhibition = inhibition
        self.register_buffer("scale_in", torch.ones(1, n, 1, 1))
        self.register_buffer("scale_out", torch.ones(1, n, 1, 1))

    def compete(self, g: torch.Tensor) -> torch.Tensor:
        g = g * self.scale_in
        top2, idx = g.topk(2, dim=1)
        is_top = F.one_hot(idx[:, 0], g.shape[1]).permute(0, 3, 1, 2).bool()
        others = torch.where(is_top, top2[:, 1:2], top2[:, 0:1])
        # Best matches of overlapping templates can sit a cell apart: inhibit over 3x3.
        others = F.max_pool2d(others.clamp(min=0), 3, stride=1, padding=1)
        return g - self.inhibition * others

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.compete(F.max_pool2d(g, 2)) * self.scale_out


class WorldNet(nn.Module):
    # Each planted layer's input map for neuron embeddings: its planted readout (the model declares it, since
    # the readout and the crosstalk branch run in parallel and neither is the other's input).
    polypsi_input_maps = {"layer3": "layer3.readout", "layer4": "layer4.readout"}

    def __init__(self, stem, layer1, layer2, layer3, layer4, fc_weight: torch.Tensor):
        super().__init__()
        self.stem = stem
        self.layer1 = layer1
        self.layer2 = layer2
        self.layer3 = layer3
        self.layer4 = layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(fc_weight.shape[1], fc_weight.shape[0], bias=False)
        self.fc.weight.data.copy_(fc_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(
    world: WorldConfig, input_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> WorldNet:
    """The planted model for `world` (eval mode, no gradients on weights).

    Inputs: [B, 3, S, S] images normalised with `mean`/`std`. `input_size` is the size
    the images are resized (upsampled) to before the model, `model.input_size` in the
    config (default: the rendered size). The model scales its input by
    world.image_size / input_size, so at S = input_size every detector sees objects at
    the size they were rendered; other sizes work too (maps grow with S, as in any CNN).
    Construction takes a few seconds (calibration renders); repeated builds in one
    process are copies of a cached model.
    """
    key = (world.model_dump_json(), int(input_size or world.image_size), tuple(mean), tuple(std))
    return copy.deepcopy(_construct(*key))


@functools.lru_cache(maxsize=4)
def _construct(world_json: str, input_size: int, mean: tuple, std: tuple) -> WorldNet:
    world = WorldConfig.model_validate_json(world_json)
    spec = world_spec(world)
    plans = plan_channels(world)
    n, c = len(spec.concepts), world.channels
    palette = list(dict.fromkeys(cc.colour for cc in spec.concepts))
    stem = ColourStem([COLOURS[p] for p in palette], input_size / world.image_size, mean, std)
    layer1 = ShapeBank(spec.concepts, [palette.index(cc.colour) for cc in spec.concepts], world.image_size)
    layer2 = Competition(n, INHIBITION)
    _calibrate(world, spec, nn.Sequential(stem, layer1), layer2, input_size, mean, std)
    _balance_on_scenes(world, spec, nn.Sequential(stem, layer1), layer2, input_size, mean, std)

    rng = np.random.default_rng([world.seed, STREAM_MODEL, 1])
    copies = {p.concepts[0]: p.channel for p in plans if p.copy}
    layers = {}
    for layer, n_in, stride in (("layer3", n, 1), ("layer4", c, 2)):
        readout = torch.zeros(c, n_in)
        live = torch.zeros(c)
        for p in plans:
            if p.layer != layer or p.kind == "dead":
                continue
            live[p.channel] = 1
            for i, w in zip(p.concepts, p.weights):
                if layer == "layer3":
                    readout[p.channel, i] = w
                else:  # layer3's detector of concept i peaks near 1 - threshold: rescale to ~1
                    readout[p.channel, copies[i]] = w / (1 - THRESHOLD["layer3"])
        # Crosstalk: a concept at full strength over the 3x3 window adds ~N(0, crosstalk^2)
        # (in layer4 a concept reaches ~c/n layer3 channels: scale down by the square root).
        per_concept = 1.0 if layer == "layer3" else math.sqrt(n / c)
        noise = rng.normal(0, world.crosstalk / 3 * per_concept, (c, n_in, 3, 3))
        crosstalk = torch.tensor(noise, dtype=torch.float32) * live.view(-1, 1, 1, 1)
        # Dead channels: no input at all and a negative bias, so they never exceed 0.
        threshold = torch.where(live > 0, torch.tensor(THRESHOLD[layer]), torch.tensor(1.0))
        layers[layer] = PlantedLayer(readout, crosstalk, threshold, stride)

    fc = torch.zeros(world.n_classes, c)
    for p in plans:
        if p.layer == "layer4":
            for i in p.concepts:
                if i in spec.class_concepts:
                    fc[spec.class_concepts.index(i), p.channel] = 1.0
    model = WorldNet(stem, layer1, layer2, layers["layer3"], layers["layer4"], fc)
    model.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def _calibrate(world: WorldConfig, spec, front: nn.Module, layer2: Competition, input_size: int, mean, std) -> None:
    """Set layer2's per-concept scales from canonical renders of each concept.

    Instances are rendered on plain grey at main-object sizes in random poses. Each
    scale is 1 / the 80th percentile of the concept's own peak responses, before
    (scale_in) and after (scale_out) competition. This equalises concepts whose
    templates fit less well (stars, crescents), so that a polysemantic channel's
    concepts compete on equal terms for its top activations. Concepts that are no
    class's main object only appear small, so they stay weaker (a hard case).
    """
    rng = np.random.default_rng([world.seed, STREAM_MODEL, 2])
    sc, size = world.image_size / 64.0, world.image_size
    imgs, owner = [], []
    for i, c in enumerate(spec.concepts):
        lo, hi = MAIN_RADIUS
        for _ in range(CALIBRATION_INSTANCES):
            r = rng.uniform(lo, hi) * sc
            centre = tuple(rng.uniform(size / 2 - 4 * sc, size / 2 + 4 * sc, 2))
            imgs.append(render_concept(c, size, r, rng.uniform(0, 2 * np.pi), rng.uniform(*SHADE), centre))
            owner.append(i)
    x = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2)
    if input_size != size:  # as the pipeline does: resize the rendered image to the model's input size
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pooled = F.max_pool2d(front(x.float()), 2)
    owner = torch.tensor(owner)
    n = len(spec.concepts)

    def own_peak(maps: torch.Tensor) -> torch.Tensor:
        peaks = maps.amax((2, 3))
        q = torch.stack([peaks[owner == i, i].quantile(0.8) for i in range(n)])
        return q.clamp(min=0.05).view(1, -1, 1, 1)

    layer2.scale_in.copy_(1.0 / own_peak(pooled))
    layer2.scale_out.copy_(1.0 / own_peak(layer2.compete(pooled)))


@torch.no_grad()
def _balance_on_scenes(world: WorldConfig, spec, front: nn.Module, layer2: Competition, input_size: int,
                       mean, std) -> None:
    """Rescale each concept so that its instances in typical scenes reach the same high quantile.

    A polysemantic channel takes the max over its concepts, so its top activations go to
    whichever concept has the higher upper tail; equal tails give mixed top-K sets.
    The scenes are fresh draws of this world (indices past the rendered dataset), with
    clutter, distractors and occlusion; an instance's response is its concept's peak in
    the 3x3 layer2 cells around the object's centre.
    """
    size = world.image_size
    scenes = [sample_scene(world, spec, world.n_images + 100_000 + k) for k in range(BALANCE_SCENES)]
    x = torch.tensor(np.stack([draw_scene(world, spec, s) for s in scenes])).permute(0, 3, 1, 2)
    if input_size != size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    maps = torch.cat([layer2(front(x[i : i + 50].float())) for i in range(0, len(x), 50)])
    # layer2 cell u covers rendered pixels 4u..4u+3 (x the rendered/64 scale of the internal map)
    cell = size / maps.shape[-1]
    peaks: list[list[float]] = [[] for _ in spec.concepts]
    for b, s in enumerate(scenes):
        for o in s["objects"]:
            u, v = int(o["y"] // cell), int(o["x"] // cell)
            if 0 <= u < maps.shape[-2] and 0 <= v < maps.shape[-1]:
                win = maps[b, o["concept"], max(u - 1, 0) : u + 2, max(v - 1, 0) : v + 2]
                peaks[o["concept"]].append(float(win.max()))
    q = torch.tensor([np.quantile(p, BALANCE_QUANTILE) if len(p) >= 5 else 1.0 for p in peaks])
    layer2.scale_out.div_(q.clamp(min=0.05).view(1, -1, 1, 1))


def build_for_config(cfg) -> nn.Module:
    """The registry's `world` model source: the world of `cfg.world` at the run's input size and normalisation
    (by default the rendered size and ImageNet's statistics)."""
    size = cfg.model.input_size or cfg.world.image_size
    mean, std = cfg.model.mean or IMAGENET_MEAN, cfg.model.std or IMAGENET_STD
    model = build_model(cfg.world, input_size=size, mean=mean, std=std)
    model.polypsi_preprocessing = {"input_size": size, "mean": list(mean), "std": list(std)}
    return model
