import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polypsi.config import IMAGENET_MEAN, IMAGENET_STD, WorldConfig
from polypsi.world.model import build_model
from polypsi.world.spec import world_spec
from polypsi.world.render import render_concept, render_image
from polypsi.world.model import _construct
from polypsi.world.truth import plan_channels

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def prep(imgs, size=None):
    x = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).float()
    if size and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - MEAN) / STD


def activations(model, x, layers=("layer3", "layer4")):
    store, hooks = {}, []
    mods = dict(model.named_modules())
    for name in layers:
        hooks.append(mods[name].register_forward_hook(lambda _m, _i, o, n=name: store.__setitem__(n, o)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return store


@pytest.fixture(scope="module")
def world():
    return WorldConfig()


@pytest.fixture(scope="module")
def model(world):
    return build_model(world)


def test_named_stages_and_any_input_size(world, model):
    m128 = build_model(world, input_size=128)
    names = dict(m128.named_modules())
    for n in ("stem", "layer1", "layer2", "layer3", "layer4", "fc"):
        assert n in names
    img = render_image(world, world_spec(world), 0)[0]
    a = activations(m128, prep([img], 128))
    assert a["layer3"].shape == (1, world.channels, 16, 16)
    assert a["layer4"].shape == (1, world.channels, 8, 8)
    # Fully convolutional: a larger input gives proportionally larger maps.
    b = activations(m128, prep([img], 192))
    assert b["layer3"].shape[-1] == 24 and b["layer4"].shape[-1] == 12
    # At its configured input size, the model sees what the 64 px model sees.
    c = activations(model, prep([img]))
    assert torch.corrcoef(torch.stack([a["layer3"].flatten(), c["layer3"].flatten()]))[0, 1] > 0.9


def test_build_is_deterministic(world, model):
    other = _construct.__wrapped__(world.model_dump_json(), 64, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))  # no cache
    for (k, v), (k2, v2) in zip(model.state_dict().items(), other.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    reseeded = build_model(world.model_copy(update={"seed": 3}))
    assert not torch.equal(model.layer3.shortcut, reseeded.layer3.shortcut)


def test_fft_shape_bank_equals_direct_convolution(model):
    bank = model.layer1
    m = torch.rand(2, model.stem.palette.shape[0], 40, 36)  # odd-ish, non-square maps
    got = bank(m)
    g = m.index_select(1, bank.source)
    maps = (g, F.avg_pool2d(g, 2))
    best = None
    for s, lv in enumerate(bank.levels):
        k = getattr(bank, f"kernel{s}").unsqueeze(1)
        y = F.conv2d(maps[lv], k, stride=2 if lv == 0 else 1, padding=k.shape[-1] // 2, groups=k.shape[0])
        y = F.pad(y, (0, got.shape[-1] - y.shape[-1], 0, got.shape[-2] - y.shape[-2])) * bank.gains[s]
        best = y if best is None else torch.maximum(best, y)
    ref = torch.stack([best[:, bank.owner == i].amax(1) for i in range(bank.n)], 1)
    assert torch.allclose(got, ref, atol=1e-4)


def _concept_responses(world, model, n_poses=4, seed=0):
    """[layer][n_concepts, channels]: mean over poses of each channel's peak response to one rendered concept."""
    rng = np.random.default_rng(seed)
    spec = world_spec(world)
    out = {"layer3": [], "layer4": []}
    for c in spec.concepts:
        imgs = [
            render_concept(c, 64, rng.uniform(10, 14), rng.uniform(0, 2 * np.pi), rng.uniform(0.65, 1.0),
                           tuple(rng.uniform(22, 42, 2)))
            for _ in range(n_poses)
        ]
        a = activations(model, prep(imgs))
        for layer in out:
            out[layer].append(a[layer].amax((2, 3)).mean(0).numpy())
    return {k: np.stack(v) for k, v in out.items()}, spec


@pytest.mark.parametrize("crosstalk", [0.0, WorldConfig().crosstalk])
def test_planted_channels_respond_to_their_concepts_only(world, model, crosstalk):
    w = world.model_copy(update={"crosstalk": crosstalk})
    resp, spec = _concept_responses(w, model if w == world else build_model(w))
    cs = spec.concepts
    leaks = []
    for p in plan_channels(w):
        r = resp[p.layer][:, p.channel]
        if p.kind == "dead":
            assert (r <= 0).all(), f"dead {p.layer}:{p.channel} fires"
            continue
        for i in p.concepts:
            assert r[i] > 0.15, f"{p.layer}:{p.channel} ({p.kind} {p.names}) barely responds to {cs[i].name}: {r[i]:.3f}"
        # Concepts sharing neither colour nor shape with any planted concept: no response, up to
        # the deliberate crosstalk (random weak wiring of every concept into every channel).
        limit = 0.005 if crosstalk == 0 else 0.4 * r[list(p.concepts)].min()
        unrelated = [j for j in range(len(cs)) if j not in p.concepts and not any(cs[j].related(cs[i]) for i in p.concepts)]
        for j in unrelated:
            assert r[j] < limit, f"{p.layer}:{p.channel} ({p.names}) responds to unrelated {cs[j].name}: {r[j]:.3f}"
            leaks.append(r[j])
    assert len(leaks) > 500
    assert np.mean(leaks) < 0.2 * crosstalk + 0.001


def test_top_activations_on_rendered_scenes_follow_the_plan(world, model):
    spec = world_spec(world)
    scenes = [render_image(world, spec, i) for i in range(120)]
    a = activations(model, prep([s[0] for s in scenes]))
    main = np.array([s[1]["objects"][-1]["concept"] for s in scenes])
    for p in plan_channels(world):
        peak = a[p.layer][:, p.channel].amax((1, 2)).numpy()
        if p.kind == "dead":
            assert peak.max() <= 0
            continue
        for i in p.concepts:
            if i in spec.class_concepts:  # seen as a large main object in ~12 of these images
                assert peak[main == i].max() > 0.2, f"{p.layer}:{p.channel} silent on images of {spec.concepts[i].name}"
        # The channel's strongest image shows one of its planted concepts (main object or distractor).
        top = int(peak.argmax())
        shown = {o["concept"] for o in scenes[top][1]["objects"]}
        assert shown & set(p.concepts), f"{p.layer}:{p.channel} ({p.names}) peaks on an image without them"
