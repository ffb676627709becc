import time

import numpy as np
import pytest
import torch

from polypsi.config import load_config
from polypsi.embedding import EmbedderLoadError, load_embedder


def _cfg(**emb):
    return load_config({"embedder": {"name": "polypsi-tiny-vit", "pretrained": None, **emb}})


def test_tiny_open_clip_random_weights_encode_normalised():
    cfg = _cfg()
    e = load_embedder(cfg.embedder, cfg, "cpu")
    z = e.encode_images(torch.rand(3, 3, 50, 50))
    t = e.encode_texts(["a photo of a cat.", "a photo of a dog."])
    assert z.shape == (3, 64) and t.shape == (2, 64)
    assert np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    e2 = load_embedder(cfg.embedder, cfg, "cpu")  # seeded random init
    assert np.allclose(e2.encode_texts(["a photo of a cat."]), t[:1], atol=1e-6)


def test_local_checkpoint_roundtrip(tmp_path):
    cfg = _cfg(init_seed=5)
    e = load_embedder(cfg.embedder, cfg, "cpu")
    torch.save(e.model.state_dict(), tmp_path / "clip.pt")
    cfg2 = _cfg(checkpoint=str(tmp_path / "clip.pt"), init_seed=99)
    e2 = load_embedder(cfg2.embedder, cfg2, "cpu")
    x = torch.rand(2, 3, 32, 32)
    assert np.allclose(e.encode_images(x), e2.encode_images(x), atol=1e-5)


def test_missing_pretrained_weights_fail_within_seconds():
    cfg = load_config({"embedder": {"name": "ViT-B-32", "pretrained": "openai"}})
    t = time.monotonic()
    with pytest.raises(EmbedderLoadError) as e:
        load_embedder(cfg.embedder, cfg, "cpu")
    assert time.monotonic() - t < 10
    assert "embedder.checkpoint" in str(e.value) and "open_clip_pytorch_model.bin" in str(e.value)


def test_bad_names():
    cfg = load_config({"embedder": {"name": "ViT-B-32", "pretrained": "no-such-tag"}})
    with pytest.raises(EmbedderLoadError, match="not a known open_clip tag"):
        load_embedder(cfg.embedder, cfg, "cpu")
    cfg = _cfg(name="ViT-Nope")
    with pytest.raises(EmbedderLoadError, match="not an open_clip architecture"):
        load_embedder(cfg.embedder, cfg, "cpu")
    cfg = _cfg(checkpoint="/nonexistent/clip.pt")
    with pytest.raises(EmbedderLoadError, match="does not exist"):
        load_embedder(cfg.embedder, cfg, "cpu")
