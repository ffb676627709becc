import time
import urllib.error

import pytest
import torch
import torchvision

from polypsi.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from polypsi.models import ModelLoadError, build_model, extractor, load_model


def _cfg(**model):
    return load_config({"model": {"name": "resnet18", "weights": None, "input_size": 64, **model}})


def test_random_init_is_seeded():
    a, b = build_model(_cfg(init_seed=3)), build_model(_cfg(init_seed=3))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_local_checkpoint_with_wrapper_and_prefix(tmp_path):
    ref = torchvision.models.resnet18()
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "ckpt.pt")
    m = build_model(_cfg(checkpoint=str(tmp_path / "ckpt.pt")))
    assert torch.equal(m.conv1.weight, ref.conv1.weight)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_model(_cfg(checkpoint=str(tmp_path / "none.pt")))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ModelLoadError, match="do not fit torchvision 'resnet18'"):
        build_model(_cfg(checkpoint=str(tmp_path / "r34.pt")))


def test_unknown_layer_gets_suggestions():
    with pytest.raises(ModelLoadError, match="'layer5' is not a module.*layer"):
        build_model(load_config({"model": {"name": "resnet18", "weights": None, "layers": ["layer5"]},
                                 "crops": {"size": {"layer5": 8}}}))


def test_weights_unreachable_fail_fast_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    t = time.monotonic()
    with pytest.raises(ModelLoadError) as e:
        build_model(_cfg(weights="IMAGENET1K_V1"))
    assert time.monotonic() - t < 10
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in str(e.value)
    assert "model.checkpoint" in str(e.value)


def test_weights_from_cache_and_bad_enum(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    m = build_model(_cfg(weights="IMAGENET1K_V1"))
    assert torch.equal(m.fc.weight, ref.fc.weight)
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1"):
        build_model(_cfg(weights="IMAGENET9K"))


def test_feature_extractor_matches_direct_forward():
    cfg = _cfg()
    model = load_model(cfg, "cpu")
    fx, pre = extractor(model, cfg)
    assert pre.mean == tuple(IMAGENET_MEAN) and pre.std == tuple(IMAGENET_STD) and pre.input_size == 64
    x = torch.rand(2, 3, 64, 64)
    out = fx(x)
    assert out["layer3"].shape == (2, 256, 4, 4) and out["layer4"].shape == (2, 512, 2, 2)
    m = torch.tensor(pre.mean).view(1, 3, 1, 1)
    s = torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        h = (x - m) / s
        h = model.maxpool(model.relu(model.bn1(model.conv1(h))))
        ref = model.layer4(model.layer3(model.layer2(model.layer1(h))))
    assert torch.allclose(out["layer4"], ref, atol=1e-5)
    fx.close()
    assert not model.layer3._forward_hooks


def test_token_sequences_become_patch_grids():
    from polypsi.errors import StageError
    from polypsi.models import as_grid

    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 class token + a 2 x 2 grid
    grid = as_grid(tokens, "blk")
    assert grid.shape == (2, 3, 2, 2) and torch.equal(grid[:, :, 1, 0], tokens[:, 1 + 2, :])
    assert torch.equal(as_grid(tokens.transpose(0, 1), "blk", batch=2), grid)  # sequence-first output
    assert torch.equal(as_grid((tokens, None), "blk", prefix=1), grid)  # blocks that return tuples
    with pytest.raises(StageError, match="do not form a square patch grid.*model.prefix_tokens"):
        as_grid(tokens, "blk", prefix=2)
    with pytest.raises(StageError, match="outputs shape"):
        as_grid(torch.zeros(2, 3), "fc")


def test_a_corrupt_checkpoint_is_named_without_unsafe_advice(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(torchvision.models.resnet18().state_dict(), good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ModelLoadError) as e:
        build_model(_cfg(checkpoint=str(bad)))
    msg = str(e.value)
    assert str(bad) in msg and "not a readable torch checkpoint" in msg and "weights_only=False" not in msg
