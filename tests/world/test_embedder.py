import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polypsi.config import Config, EmbedderConfig, WorldConfig
from polypsi.world.embedder import build_embedder, null_concepts, prompt_concepts, templates
from polypsi.world.concepts import COLOURS, SHAPES, UNIVERSE
from polypsi.world.embedder import CONTEXT, Tokenizer, base_vocabulary
from polypsi.world.render import draw_object, render_image
from polypsi.world.spec import world_spec


@pytest.fixture(scope="module")
def emb():
    return build_embedder(WorldConfig())


def _encode_images(emb, imgs):
    size = (emb.image_size, emb.image_size)
    x = torch.cat([F.interpolate(torch.tensor(i).permute(2, 0, 1)[None].float(), size=size, mode="bicubic",
                                 antialias=True, align_corners=False) for i in imgs])
    x = (x.clamp(0, 1) - torch.tensor(emb.mean).view(1, 3, 1, 1)) / torch.tensor(emb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return emb.encode_image(x, normalize=True)


def _concept_text(emb, names):
    with torch.no_grad():
        z = torch.stack([emb.encode_text(emb.tokenizer([t.format(n) for n in names]), normalize=True) for t in templates()])
    return F.normalize(z.mean(0), dim=-1)


def test_prompt_sets():
    assert prompt_concepts() == [c.name for c in UNIVERSE] and len(set(prompt_concepts())) == 56
    assert len(templates()) == 6 and all(t.count("{}") == 1 for t in templates())
    null = null_concepts()
    assert len(null) >= 20
    vocab = set(COLOURS) | set(SHAPES)
    assert not any(vocab & set(c.lower().split()) for c in null)


def test_prompt_sets_are_the_embedders_not_a_worlds():
    """One embedder, trained on the whole universe, serves every world: its prompt lists take no world."""
    for f in (prompt_concepts, templates, null_concepts):
        assert not inspect.signature(f).parameters, f.__name__


def test_tokenizer_known_unknown_and_padding():
    tok = Tokenizer(base_vocabulary())
    a = tok(["a photo of a red disc.", "a photo of a mortgage rate", "x " * 40])
    assert a.shape == (3, CONTEXT) and a.dtype == torch.long
    v = len(base_vocabulary())
    assert (a[0, :6] <= v).all() and (a[0, 6:] == 0).all()
    assert (a[1, 4:6] > v).all()  # unknown words hash past the vocabulary
    assert torch.equal(tok(["mortgage rate"]), tok(["Mortgage, RATE!"]))
    assert tok(["mortgage"])[0, 0] != tok(["melody"])[0, 0]


def test_text_embeddings_unknown_words_are_distinct_directions(emb):
    null = null_concepts()
    z = _concept_text(emb, null)
    assert torch.allclose(z.norm(dim=1), torch.ones(len(null)), atol=1e-5)
    cos = z @ z.T
    off = cos[~torch.eye(len(null), dtype=bool)]
    assert off.max() < 0.995  # no two null concepts collapse onto one vector
    assert torch.equal(z, _concept_text(emb, null))  # deterministic


def test_retrieves_the_rendered_concept_well_above_chance(emb):
    """Single objects of every universe concept, random pose, on a cluttered background."""
    rng = np.random.default_rng(0)
    w = WorldConfig(n_concepts=56, n_classes=56, seed=5)
    spec = world_spec(w)
    imgs, truth = [], []
    for k in range(2 * len(UNIVERSE)):
        c = UNIVERSE[k % len(UNIVERSE)]
        # A scene's clutter and main object, with the concept under test drawn on top at the centre.
        img = render_image(w.model_copy(update={"distractors": 0.0}), spec, k)[0].copy()
        obj = {"x": 31.5, "y": 31.5, "r": rng.uniform(9, 14), "theta": rng.uniform(0, 2 * np.pi),
               "shade": rng.uniform(0.65, 1.0), "light": 0.0, "tint": [0, 0, 0]}
        draw_object(img, c, obj)
        side = int(2 * obj["r"] * 1.6)
        lo = 32 - side // 2
        imgs.append(img[lo : lo + side, lo : lo + side])
        truth.append(k % len(UNIVERSE))
    z = _encode_images(emb, [np.ascontiguousarray(i) for i in imgs])
    pred = (z @ _concept_text(emb, prompt_concepts()).T).argmax(1).numpy()
    acc = (pred == np.array(truth)).mean()
    colour_acc = np.mean([UNIVERSE[p].colour == UNIVERSE[t].colour for p, t in zip(pred, truth)])
    assert colour_acc > 0.9
    assert acc > 0.4, f"top-1 accuracy {acc:.2f} (chance {1 / 56:.3f})"


def test_lead_wrapper_encodes_normalised_arrays():
    from polypsi.embedding import load_embedder

    cfg = Config(world=WorldConfig())
    e = load_embedder(EmbedderConfig(source="world"), cfg, "cpu")
    img = torch.rand(3, 3, 48, 48)
    zi = e.encode_images(img)
    zt = e.encode_texts(["a photo of a red disc.", "a photo of a melody."])
    assert zi.shape == (3, 64) and zt.shape == (2, 64)
    assert np.allclose(np.linalg.norm(zi, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(zt, axis=1), 1, atol=1e-5)


def test_missing_weights_say_how_to_retrain(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_world_embedder.py"):
        build_embedder(WorldConfig(), weights=tmp_path / "none.pt")
