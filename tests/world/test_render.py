import hashlib

import numpy as np
import pytest

from polypsi.config import WorldConfig
from polypsi.io import read_json
from polypsi.world.render import render_world
from polypsi.world.spec import world_spec
from polypsi.world.truth import ground_truth
from polypsi.world.concepts import UNIVERSE, Concept, choose_concepts, concept_by_name, shape_alpha
from polypsi.world.render import render_concept, render_image
from polypsi.world.truth import plan_channels


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_render_world_is_deterministic_and_seeded(tmp_path):
    w = WorldConfig(n_images=24)
    render_world(w, tmp_path / "a")
    render_world(w, tmp_path / "b")
    render_world(w.model_copy(update={"seed": 1}), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert (tmp_path / "a" / "world.json").read_text() == (tmp_path / "b" / "world.json").read_text()


def test_render_world_layout_and_description(tmp_path):
    w = WorldConfig(n_images=30, n_classes=5, n_concepts=8)
    render_world(w, tmp_path)
    spec = world_spec(w)
    paths = sorted((tmp_path / "images").rglob("*.png"))
    assert len(paths) == 30
    assert {p.parent.name for p in paths} == set(spec.class_names)
    desc = read_json(tmp_path / "world.json")
    assert [c["name"] for c in desc["concepts"]] == spec.concept_names()
    assert len(desc["images"]) == 30 and len(desc["channels"]) == 2 * w.channels
    # The main object (drawn last) is the concept of the image's class folder.
    for scene in desc["images"]:
        cls = desc["classes"][scene["label"]]
        main = scene["objects"][-1]
        assert main["main"] and desc["concepts"][main["concept"]]["name"] == cls["concept"]
        assert (tmp_path / "images" / cls["name"] / f"{scene['image_id']:05d}.png").is_file()
    from PIL import Image

    assert Image.open(paths[0]).size == (w.image_size, w.image_size)


def test_render_image_is_independent_of_order():
    w = WorldConfig()
    spec = world_spec(w)
    a = render_image(w, spec, 7)[0]
    render_image(w, spec, 3)
    assert np.array_equal(a, render_image(w, spec, 7)[0])


def test_knobs_change_pixels():
    w = WorldConfig()
    spec = world_spec(w)
    plain = render_image(w.model_copy(update={"clutter": 0.0, "noise": 0.0}), spec, 0)[0]
    busy = render_image(w.model_copy(update={"clutter": 1.0, "noise": 0.0}), spec, 0)[0]
    # Clutter adds high-frequency detail: larger mean gradient.
    grad = lambda x: np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()  # noqa: E731
    assert grad(busy) > grad(plain) * 1.5
    noisy = render_image(w.model_copy(update={"clutter": 0.0, "noise": 0.2}), spec, 0)[0]
    assert np.abs(noisy - plain).mean() > 0.05


def test_concept_choice_respects_similarity():
    def shared(cs):
        return sum(a.related(b) for i, a in enumerate(cs) for b in cs[i + 1 :])

    low = [shared(choose_concepts(7, 0.0, np.random.default_rng(s))) for s in range(20)]
    high = [shared(choose_concepts(7, 1.0, np.random.default_rng(s))) for s in range(20)]
    assert max(low) == 0  # 7 concepts fit in 8 colours x 7 shapes without sharing anything
    assert min(high) >= 6  # every new concept shares an attribute with an earlier one
    with pytest.raises(ValueError, match="n_concepts"):
        choose_concepts(len(UNIVERSE) + 1, 0.3, np.random.default_rng(0))


def test_shapes_have_comparable_areas_and_names_roundtrip():
    yy, xx = np.mgrid[-20:21, -20:21].astype(np.float32)
    areas = {s: shape_alpha(s, xx, yy, 12.0, 0.3).sum() for s in {c.shape for c in UNIVERSE}}
    disc = np.pi * 144
    for s, a in areas.items():
        assert 0.25 * disc < a < 1.05 * disc, (s, a)
    assert concept_by_name("Teal_Crescent") == Concept("teal", "crescent")
    with pytest.raises(KeyError, match="unknown world concept"):
        concept_by_name("mauve blob")


def test_render_concept_paints_the_concept_colour():
    c = Concept("blue", "square")
    img = render_concept(c, radius=12, shade=1.0)
    centre = img[28:36, 28:36].reshape(-1, 3).mean(0)
    assert np.allclose(centre, c.rgb, atol=0.06)
    assert np.allclose(img[0, 0], 0.5)


def test_ground_truth_table_and_plan_agree():
    w = WorldConfig()
    gt = ground_truth(w)
    assert list(gt.columns) == ["layer", "channel", "kind", "n_concepts", "concepts"]
    assert set(gt["layer"]) == {"layer3", "layer4"}
    for layer, g in gt.groupby("layer"):
        assert sorted(g["channel"]) == list(range(w.channels))
        assert (g["kind"] == "poly").sum() == round(w.polysemantic_share * w.channels)
        assert (g["kind"] == "dead").sum() == round(w.dead_share * w.channels)
    assert set(gt.loc[gt.kind == "poly", "n_concepts"]) <= {2, 3}
    assert (gt.loc[gt.kind == "mono", "n_concepts"] == 1).all()
    assert (gt.loc[gt.kind == "dead", "n_concepts"] == 0).all()
    names = set(world_spec(w).concept_names())
    for cs in gt["concepts"]:
        assert set(filter(None, cs.split(";"))) <= names
    # Every concept has a layer3 detector (layer4 reads them).
    copies = {p.names[0] for p in plan_channels(w) if p.copy}
    assert copies == names


def test_bad_world_settings_are_explained():
    with pytest.raises(ValueError, match="n_classes"):
        world_spec(WorldConfig(n_classes=13, n_concepts=12))
    with pytest.raises(ValueError, match="exceed 1"):
        plan_channels(WorldConfig(polysemantic_share=0.8, dead_share=0.5))
    with pytest.raises(ValueError, match="raise world.channels"):
        plan_channels(WorldConfig(channels=16))
