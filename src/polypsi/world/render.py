"""Deterministic rendering of the planted world's images.

Each image has a class; its main object is a large instance of the class's concept,
drawn on top of a few smaller distractor objects (any world concept) and of a
cluttered background (a smooth colour field plus random strokes and blobs). Pose,
scale and shade vary per instance. Image i is a pure function of (world.seed, i),
so images can be rendered in any order or in parallel.

Geometry is defined for a 64 px image and scaled with `world.image_size`.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

from polypsi.config import WorldConfig
from polypsi.io import atomic_dir, write_json
from polypsi.world.concepts import Concept, shape_alpha
from polypsi.world.spec import STREAM_SCENES, WorldSpec, world_spec
from polypsi.world.truth import plan_channels

# Radii in pixels of a 64 px image.
MAIN_RADIUS = (9.0, 14.0)
DISTRACTOR_RADIUS = (4.5, 8.0)
SHADE = (0.65, 1.0)


def _scale(world: WorldConfig) -> float:
    return world.image_size / 64.0


def sample_scene(world: WorldConfig, spec: WorldSpec, index: int) -> dict:
    """The objects of image `index` (no pixels): class, and each object's concept and pose."""
    rng = np.random.default_rng([world.seed, STREAM_SCENES, index])
    size, sc = world.image_size, _scale(world)
    label = index % len(spec.class_concepts)
    objects = []
    n_distractors = int(min(rng.poisson(world.distractors), 4))
    for _ in range(n_distractors):
        r = rng.uniform(*DISTRACTOR_RADIUS) * sc
        objects.append(_pose(rng, int(rng.integers(len(spec.concepts))), r, rng.uniform(0, size, 2), main=False))
    r = rng.uniform(*MAIN_RADIUS) * sc
    centre = rng.uniform(r + 1, size - r - 1, 2)
    objects.append(_pose(rng, spec.class_concepts[label], r, centre, main=True))  # drawn last: on top
    return {"image_id": index, "label": label, "objects": objects, "clutter_seed": int(rng.integers(2**31))}


def _pose(rng: np.random.Generator, concept: int, r: float, centre: np.ndarray, main: bool) -> dict:
    return {
        "concept": concept,
        "x": float(centre[0]),
        "y": float(centre[1]),
        "r": float(r),
        "theta": float(rng.uniform(0, 2 * np.pi)),
        "shade": float(rng.uniform(*SHADE)),
        "light": float(rng.uniform(0, 2 * np.pi)),  # direction of the shading gradient
        "tint": [float(t) for t in rng.normal(0, 0.03, 3)],
        "main": main,
    }


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth, weakly coloured field (low saturation, so it never looks like a concept colour)."""
    g = int(rng.integers(3, 6))
    grid = np.empty((g, g, 3), np.float32)
    for i in range(g):
        for j in range(g):
            grid[i, j] = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.25), rng.uniform(0.3, 0.85))
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(img, np.float32) / 255.0


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray, y0: int, x0: int) -> None:
    h, w = alpha.shape
    patch = img[y0 : y0 + h, x0 : x0 + w]
    a = alpha[..., None]
    patch *= 1 - a
    patch += a * colour


def _box(cx: float, cy: float, ext: float, size: int):
    x0, x1 = max(int(np.floor(cx - ext)), 0), min(int(np.ceil(cx + ext)) + 1, size)
    y0, y1 = max(int(np.floor(cy - ext)), 0), min(int(np.ceil(cy + ext)) + 1, size)
    return x0, x1, y0, y1


def _clutter(img: np.ndarray, rng: np.random.Generator, amount: float, scale: float) -> None:
    """Random strokes and blobs of any hue: they can share a concept's colour but not its shape."""
    size = img.shape[0]
    n = int(rng.poisson(amount * 40 * scale * scale))
    for _ in range(n):
        colour = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.9), rng.uniform(0.3, 0.95)), np.float32)
        cx, cy = rng.uniform(0, size, 2)
        if rng.random() < 0.5:  # stroke: distance to a segment
            length = rng.uniform(6, 30) * scale
            ang = rng.uniform(0, np.pi)
            hw = rng.uniform(0.5, 1.2) * scale
            ux, uy = np.cos(ang), np.sin(ang)
            x0, x1, y0, y1 = _box(cx, cy, length / 2 + 2, size)
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            t = np.clip((xx - cx) * ux + (yy - cy) * uy, -length / 2, length / 2)
            d = np.hypot(xx - cx - t * ux, yy - cy - t * uy) - hw
        else:  # blob: a small ellipse
            a, b = rng.uniform(1, 5, 2) * scale
            ang = rng.uniform(0, np.pi)
            x0, x1, y0, y1 = _box(cx, cy, max(a, b) + 2, size)
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
            v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
            d = (np.hypot(u / a, v / b) - 1) * min(a, b)
        if x1 > x0 and y1 > y0:
            _paint(img, np.clip(0.5 - d, 0, 1), colour, y0, x0)


def draw_object(img: np.ndarray, concept: Concept, obj: dict) -> None:
    """Paint one concept instance (pose from `obj`) onto `img` [S, S, 3] in place."""
    size = img.shape[0]
    cx, cy, r = obj["x"], obj["y"], obj["r"]
    x0, x1, y0, y1 = _box(cx, cy, 1.2 * r + 2, size)
    if x1 <= x0 or y1 <= y0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    alpha = shape_alpha(concept.shape, dx, dy, r, obj["theta"])
    # Shade, a slight tint and a lighting gradient across the object: natural variation.
    light = 1 + 0.15 * (dx * np.cos(obj["light"]) + dy * np.sin(obj["light"])) / r
    colour = (np.asarray(concept.rgb, np.float32) + np.asarray(obj["tint"], np.float32)) * obj["shade"]
    colour = np.clip(colour[None, None, :] * light[..., None], 0, 1)
    _paint(img, alpha, colour, y0, x0)


def draw_scene(world: WorldConfig, spec: WorldSpec, scene: dict) -> np.ndarray:
    """Pixels of a scene: float32 [S, S, 3] in [0, 1]."""
    size = world.image_size
    rng = np.random.default_rng([world.seed, STREAM_SCENES, scene["image_id"], scene["clutter_seed"]])
    img = _background(rng, size)
    _clutter(img, rng, world.clutter, _scale(world))
    for obj in scene["objects"]:
        draw_object(img, spec.concepts[obj["concept"]], obj)
    if world.noise > 0:
        img = img + rng.normal(0, world.noise, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def render_image(world: WorldConfig, spec: WorldSpec, index: int) -> tuple[np.ndarray, dict]:
    scene = sample_scene(world, spec, index)
    return draw_scene(world, spec, scene), scene


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(img * 255).astype(np.uint8)


def render_concept(
    concept: Concept,
    size: int = 64,
    radius: float = 12.0,
    theta: float = 0.0,
    shade: float = 0.9,
    centre: tuple[float, float] | None = None,
    background: float = 0.5,
) -> np.ndarray:
    """One instance of `concept` on a plain grey background: float32 [S, S, 3] in [0, 1]."""
    img = np.full((size, size, 3), background, np.float32)
    cx, cy = centre if centre is not None else (size / 2 - 0.5, size / 2 - 0.5)
    obj = {"x": cx, "y": cy, "r": radius, "theta": theta, "shade": shade, "light": 0.0, "tint": [0, 0, 0]}
    draw_object(img, concept, obj)
    return img


def image_path(out_dir: Path, spec: WorldSpec, scene: dict) -> Path:
    return Path(out_dir) / "images" / spec.class_names[scene["label"]] / f"{scene['image_id']:05d}.png"


def render_world(world: WorldConfig, out_dir: str | Path) -> None:
    """Write `out_dir/images/<class>/<nnnnn>.png` and `out_dir/world.json` (deterministic from the seed)."""
    out_dir = Path(out_dir)
    spec = world_spec(world)
    scenes = []
    with atomic_dir(out_dir / "images") as tmp:  # in place when complete; a killed render's folder goes next time
        for i in range(world.n_images):
            img, scene = render_image(world, spec, i)
            path = tmp / image_path(out_dir, spec, scene).relative_to(out_dir / "images")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint8(img)).save(path, format="PNG")
            scenes.append(scene)
    write_json(world_description(world, spec, scenes), out_dir / "world.json")


def world_description(world: WorldConfig, spec: WorldSpec, scenes: list[dict] | None = None) -> dict:
    return {
        "world": world.model_dump(),
        "concepts": [{"name": c.name, "colour": c.colour, "shape": c.shape, "rgb": list(c.rgb)} for c in spec.concepts],
        "classes": [
            {"label": k, "name": spec.class_names[k], "concept": spec.concepts[i].name}
            for k, i in enumerate(spec.class_concepts)
        ],
        "channels": [p.as_row() for p in plan_channels(world)],
        "images": scenes or [],
    }


def render_for_config(cfg, out_dir: str | Path) -> None:
    """The registry's `world` dataset renderer: images/ and world.json under `out_dir`."""
    render_world(cfg.world, out_dir)
