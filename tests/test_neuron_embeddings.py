"""Neuron embeddings: by hand, against brute force, input maps of real architectures, the planted world, the stage."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from conftest import write_images
from polypsi.config import WorldConfig, load_config
from polypsi.errors import ConfigError, StageError
from polypsi.io import read_table, write_table
from polypsi.job import Files, Job
from polypsi.models import as_grid, prefix_tokens_of
from polypsi.neuron_embeddings import (capture_input, conv_windows, embed_sites, layer_neuron_embeddings,
                                       neuron_embeddings_stage, resolve_input_map)


def _embed(model, layer, x, channels, b, u, v, module=None):
    """Neuron embeddings of sites (b, u, v) of `channels`, and the input map's output there (hooked)."""
    imap = resolve_input_map(model, layer, x.shape[-1], module, prefix_tokens_of(model))
    mod = dict(model.named_modules())[imap.module]
    store = {}
    h = mod.register_forward_hook(lambda _m, _i, o: store.setdefault("out", o))
    with torch.no_grad():
        model(x)
    h.remove()
    z = embed_sites(mod, imap, capture_input(model, imap.module, x), b, u, v, channels, len(x))
    return imap, z, store["out"]


def test_one_by_one_conv_by_hand():
    conv = nn.Conv2d(3, 2, 1)
    conv.weight.data = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]).view(2, 3, 1, 1)
    conv.bias.data = torch.tensor([0.25, -1.0])
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)  # x[b, i, u, v] = 12b + 4i + 2u + v
    imap, z, out = _embed(model, "0", x, channels=[0, 1, 1], b=[0, 0, 1], u=[0, 0, 1], v=[0, 1, 0])
    assert (imap.module, imap.kind, imap.source, imap.dim) == ("0", "conv", "derived", 3)
    want = torch.tensor([[0 * 1.0, 4 * 2.0, 8 * 3.0],  # channel 0 at (b0, 0, 0): inputs 0, 4, 8
                         [1 * 0.0, 5 * -1.0, 9 * 0.5],  # channel 1 at (b0, 0, 1): inputs 1, 5, 9
                         [14 * 0.0, 18 * -1.0, 22 * 0.5]])  # channel 1 at (b1, 1, 0): inputs 14, 18, 22
    assert torch.equal(z, want)
    # the embedding's sum plus the bias is the map's output at the site
    assert torch.allclose(z.sum(1) + conv.bias[[0, 1, 1]], out[[0, 0, 1], [0, 1, 1], [0, 0, 1], [0, 1, 0]])


def _brute_force(x, w, c, b, u, v, stride, padding, dilation):
    """The input window of output unit (u, v) times w[c], one element at a time (zeros outside the input)."""
    cin, kh, kw = w.shape[1:]
    out = torch.zeros(cin, kh, kw)
    for i in range(kh):
        for j in range(kw):
            r, s = u * stride - padding + i * dilation, v * stride - padding + j * dilation
            if 0 <= r < x.shape[2] and 0 <= s < x.shape[3]:
                out[:, i, j] = x[b, :, r, s] * w[c, :, i, j]
    return out.flatten()


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 1, 2, 2), (2, 3, 0, 1)])
def test_conv_windows_against_brute_force_and_unfold(k, stride, padding, dilation):
    g = torch.Generator().manual_seed(k * 100 + stride * 10 + padding + dilation)
    conv = nn.Conv2d(3, 4, k, stride=stride, padding=padding, dilation=dilation)
    conv.weight.data = torch.randn(conv.weight.shape, generator=g)
    x = torch.randn(2, 3, 9, 11, generator=g)
    imap, z, out = _embed(conv, "", x, *_all_sites(conv, x))
    channels, b, u, v = _all_sites(conv, x)
    assert imap.dim == 3 * k * k and z.shape == (len(b), 3 * k * k)
    for n in range(0, len(b), 7):
        assert torch.allclose(z[n], _brute_force(x, conv.weight.detach(), channels[n], b[n], u[n], v[n], stride,
                                                 padding, dilation))
    cols = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)  # [B, in*k*k, H_out*W_out]
    want = cols[b, :, u * out.shape[-1] + v] * conv.weight.flatten(1)[channels]
    assert torch.allclose(z, want)
    assert torch.allclose(z.sum(1) + conv.bias[channels], out[b, channels, u, v], atol=1e-5)


def _all_sites(conv, x):
    with torch.no_grad():
        h, w = conv(x).shape[-2:]
    grid = np.stack(np.meshgrid(range(conv.out_channels), range(len(x)), range(h), range(w), indexing="ij"), -1)
    channels, b, u, v = (torch.tensor(a) for a in grid.reshape(-1, 4).T)
    return channels, b, u, v


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 2, 4, padding="same", padding_mode="reflect"),
                                  nn.Conv2d(3, 2, 3, stride=2, padding=1, padding_mode="circular"),
                                  nn.Conv2d(3, 4, 3, padding=1, bias=False).to(memory_format=torch.channels_last)])
def test_conv_padding_modes_same_padding_and_channels_last(conv):
    x = torch.randn(2, 3, 7, 8, generator=torch.Generator().manual_seed(1))
    _, z, out = _embed(conv, "", x, *_all_sites(conv, x))
    channels, b, u, v = _all_sites(conv, x)
    bias = conv.bias[channels] if conv.bias is not None else 0
    assert torch.allclose(z.sum(1) + bias, out[b, channels, u, v], atol=1e-5)


def test_window_indexing_is_that_of_the_padded_input():
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    x = torch.arange(25.0).view(1, 1, 5, 5)
    win = conv_windows(x, conv, torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))  # rows 1..3, columns 3..5
    assert torch.equal(win[0, 0], torch.tensor([[8.0, 9, 0], [13, 14, 0], [18, 19, 0]]))


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_resnet_stages_take_their_last_blocks_last_conv(resnet18):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for layer, module in (("layer3", "layer3.1.conv2"), ("layer4", "layer4.1.conv2"), ("layer3.1", "layer3.1.conv2")):
        imap, z, out = _embed(resnet18, layer, x, channels=[0, 5, 255], b=[0, 1, 1], u=[0, 1, 1], v=[1, 0, 1])
        assert (imap.module, imap.kind, imap.source, imap.dim) == (module, "conv", "derived", 9 * (256 if
                                                                                              layer != "layer4" else 512))
        assert torch.allclose(z.sum(1), out[[0, 1, 1], [0, 5, 255], [0, 1, 1], [1, 0, 1]], atol=1e-4)


def test_ambiguous_and_underivable_layers_name_the_config_key(resnet18):
    # a first block: its last conv and its downsampling shortcut produce its channels side by side
    with pytest.raises(StageError, match=r"layer3\.0: its input map is ambiguous.*layer3\.0\.conv2.*"
                                         r"layer3\.0\.downsample\.0.*neuron_embeddings: \{module: \{layer3\.0: "):
        resolve_input_map(resnet18, "layer3.0", 32)
    with pytest.raises(StageError, match=r"avgpool.*cannot be derived.*\{module: \{avgpool: <module name>\}\}"):
        resolve_input_map(resnet18, "avgpool", 32)
    # the config settles it; a module that cannot be the layer's input map is refused by name
    assert resolve_input_map(resnet18, "layer3.0", 32, "layer3.0.conv2").source == "config"
    with pytest.raises(StageError, match="not a module of the model; close names"):
        resolve_input_map(resnet18, "layer3.0", 32, "layer3.0.conv9")
    with pytest.raises(StageError, match="layer2.1.conv2 produces 128 channels on a 4x4 grid, but the layer has its 256"):
        resolve_input_map(resnet18, "layer3", 32, "layer2.1.conv2")
    with pytest.raises(StageError, match="BatchNorm2d; an input map must be a Conv2d or a Linear"):
        resolve_input_map(resnet18, "layer3", 32, "layer3.1.bn2")
    grouped = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3))
    with pytest.raises(StageError, match="grouped convolution"):
        resolve_input_map(grouped, "0", 16)


def test_vit_block_takes_its_mlps_last_linear_and_sites_follow_as_grid():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, depth=3,
                              reg_tokens=2).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    channels, b, u, v = [0, 7, 191], [0, 1, 1], [0, 3, 7], [5, 2, 7]
    imap, z, out = _embed(model, "blocks.1", x, channels, b, u, v)
    assert (imap.module, imap.kind, imap.dim, imap.tokens, imap.prefix, imap.side) == \
        ("blocks.1.mlp.fc2", "linear", 768, True, 3, 8)  # class token + 2 registers before the 8 x 8 grid
    fc2 = model.blocks[1].mlp.fc2
    # the map's output at site (u, v), read through as_grid as mining reads the layer
    assert torch.allclose(z.sum(1) + fc2.bias[channels], as_grid(out, "blocks.1", 3)[b, channels, u, v], atol=1e-4)
    assert torch.allclose(z[1], capture_input(model, "blocks.1.mlp.fc2", x)[1, 3 + 3 * 8 + 2] * fc2.weight[7])


@pytest.fixture(scope="module")
def world_model():
    from polypsi.world.model import build_model

    return build_model(WorldConfig(image_size=32, channels=8, n_concepts=4, n_classes=3, n_images=10, seed=1))


def test_planted_world_layers_embed_through_their_planted_readout(world_model):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for layer, n_in in (("layer3", 4), ("layer4", 8)):
        readout = getattr(world_model, layer).readout
        planted = readout.planted
        channels = [c for c in range(8) if planted[c].any()][:3]
        b, u, v = [0, 1, 1], [0, 2, 3], [1, 0, 3]
        imap, z, out = _embed(world_model, layer, x, channels, b, u, v)
        assert (imap.module, imap.source, imap.dim) == (f"{layer}.readout", "model", n_in)
        # w_ci * h_i: zero off the planted inputs, and the channel's planted response is their max
        assert torch.all(z[~planted[channels]] == 0)
        got = z.masked_fill(~planted[channels], float("-inf")).amax(1)
        assert torch.allclose(got, out[b, channels, u, v])
    # without the model's declaration the readout and the crosstalk branch are side by side
    world_model.polypsi_input_maps = {}
    try:
        with pytest.raises(StageError, match=r"layer3\.readout, layer3\.branch|layer3\.branch, layer3\.readout"):
            resolve_input_map(world_model, "layer3", 32)
    finally:
        del world_model.polypsi_input_maps


def test_stage_writes_channel_rank_embedding_for_the_top_sites_only(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "img", 5, size=32)
    dataset = pd.DataFrame({"image_id": np.arange(5), "path": [str(p) for p in paths], "label": 0})
    topk = pd.DataFrame({"channel": [0, 0, 3, 3], "rank": [0, 1, 0, 1], "image_id": [4, 1, 1, 1],
                         "u": [0, 1, 1, 2], "v": [2, 0, 1, 3], "activation": np.float32([3, 2, 5, 1])})
    cfg = load_config({"device": "cpu", "model": {"name": "resnet18", "weights": None, "layers": ["layer3"],
                                                  "input_size": 64},
                       "crops": {"size": {"layer3": 32}}, "neuron_embeddings": {"batch_size": 1}})
    seen = []
    real = capture_input
    monkeypatch.setattr("polypsi.neuron_embeddings.capture_input", lambda m, n, x: seen.append(len(x)) or real(m, n, x))
    write_table(dataset, tmp_path / "dataset.parquet")
    write_table(topk, tmp_path / "topk.parquet")
    job = Job(cfg, input=Files(topk=str(tmp_path / "topk.parquet"), dataset=str(tmp_path / "dataset.parquet")),
              output=Files(embeddings=str(tmp_path / "ne.parquet")), wildcards={"layer": "layer3"})
    neuron_embeddings_stage(job)
    assert seen == [1, 1]  # images 1 and 4 only, one per batch
    rows, z = read_table(tmp_path / "ne.parquet", embedding="embedding")
    assert list(rows.columns) == ["channel", "rank"] and rows.equals(topk[["channel", "rank"]])
    assert z.shape == (4, 256 * 9) and z.dtype == np.float32
    # the same numbers in one batch of every image
    again, z2, imap = layer_neuron_embeddings(cfg.model_copy(update={"neuron_embeddings": cfg.neuron_embeddings.model_copy(
        update={"batch_size": 8})}), "layer3", topk, dataset, "cpu")
    assert imap.module == "layer3.1.conv2" and np.allclose(z, z2, atol=1e-5)


def test_config_module_keys_are_analysed_layers():
    cfg = load_config({"neuron_embeddings": {"module": {"layer3": "layer3.1.conv2"}}})
    assert cfg.neuron_embeddings.enabled and cfg.neuron_embeddings.module == {"layer3": "layer3.1.conv2"}
    with pytest.raises(ConfigError, match=r"neuron_embeddings.module names \['layer9'\], not among model.layers"):
        load_config({"neuron_embeddings": {"module": {"layer9": "x"}}})
