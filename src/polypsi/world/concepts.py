"""The concept vocabulary of the planted world: coloured shapes with names.

Every world draws its concepts from one fixed universe (8 colours x 7 shapes = 56
named concepts such as "red disc" or "teal crescent"), so a single embedder trained
on the universe serves every world seed. A concept's look is fully described by its
colour and its shape; pose, scale and shade vary from instance to instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Saturated colours whose chromaticities (RGB / max RGB) are far apart, so that a
# colour stays recognisable under shading; orange/yellow and purple/pink are the
# closest pairs on purpose (hard cases).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "orange": (0.98, 0.55, 0.05),
    "yellow": (0.95, 0.88, 0.10),
    "green": (0.15, 0.70, 0.20),
    "teal": (0.05, 0.65, 0.65),
    "blue": (0.12, 0.30, 0.92),
    "purple": (0.55, 0.20, 0.80),
    "pink": (0.98, 0.45, 0.72),
}

SHAPES: tuple[str, ...] = ("disc", "ring", "square", "triangle", "cross", "star", "crescent")

# Rotational symmetry order of each shape (0 = fully symmetric): detectors only need
# templates over one symmetry period.
SYMMETRY: dict[str, int] = {
    "disc": 0,
    "ring": 0,
    "square": 4,
    "triangle": 3,
    "cross": 4,
    "star": 5,
    "crescent": 1,
}


@dataclass(frozen=True)
class Concept:
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def slug(self) -> str:
        """Folder-safe name (class folders of the ImageFolder tree)."""
        return f"{self.colour}_{self.shape}"

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]

    def related(self, other: "Concept") -> bool:
        """Shares a colour or a shape (and is a different concept)."""
        return self != other and (self.colour == other.colour or self.shape == other.shape)


UNIVERSE: tuple[Concept, ...] = tuple(Concept(c, s) for c in COLOURS for s in SHAPES)


def concept_by_name(name: str) -> Concept:
    key = name.strip().lower().replace("_", " ")
    for c in UNIVERSE:
        if c.name == key:
            return c
    raise KeyError(f"unknown world concept {name!r}; known: colour + shape, e.g. 'red disc' ({len(UNIVERSE)} in all)")


def choose_concepts(n: int, similarity: float, rng: np.random.Generator) -> list[Concept]:
    """Draw `n` distinct concepts from the universe.

    With probability `similarity` the next concept shares a colour or a shape with
    one already drawn (a hard, look-alike pair); otherwise it is as novel as possible
    (a colour and a shape not used yet, when any are left).
    """
    if not 2 <= n <= len(UNIVERSE):
        raise ValueError(f"world.n_concepts must be in 2..{len(UNIVERSE)} (got {n})")
    chosen: list[Concept] = []
    while len(chosen) < n:
        rest = [c for c in UNIVERSE if c not in chosen]
        cands: list[Concept] = []
        if chosen and rng.random() < similarity:
            base = chosen[rng.integers(len(chosen))]
            cands = [c for c in rest if c.related(base)]
        if not cands:
            colours = {c.colour for c in chosen}
            shapes = {c.shape for c in chosen}
            cands = [c for c in rest if c.colour not in colours and c.shape not in shapes]
            cands = cands or [c for c in rest if c.colour not in colours or c.shape not in shapes] or rest
        chosen.append(cands[rng.integers(len(cands))])
    return chosen


# ---------------------------------------------------------------------------
# Shapes as signed distance fields (negative inside, in pixels), so the renderer can
# anti-alias edges and the model can build matched filters from the same geometry.


def shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, theta: float) -> np.ndarray:
    """Approximate signed distance to `shape` of radius `r` rotated by `theta` (radians).

    dx, dy: pixel offsets from the shape's centre. The distance is exact for disc and
    ring and a close approximation elsewhere (good to about a pixel at the edge).
    """
    c, s = np.cos(theta), np.sin(theta)
    x = c * dx + s * dy
    y = -s * dx + c * dy
    d = np.hypot(x, y)
    if shape == "disc":
        return d - r
    if shape == "ring":
        return np.maximum(d - r, 0.55 * r - d)
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) - 0.78 * r
    if shape == "triangle":
        # Equilateral, circumradius 1.1 r (so its area is close to the others'),
        # inradius half of that; one vertex points along +x.
        out = None
        for k in range(3):
            a = np.pi + 2 * np.pi * k / 3  # outward normals point away from the vertices
            e = np.cos(a) * x + np.sin(a) * y - 0.55 * r
            out = e if out is None else np.maximum(out, e)
        return out
    if shape == "cross":
        arm = 0.32 * r
        h = np.maximum(np.abs(x) - r, np.abs(y) - arm)
        v = np.maximum(np.abs(y) - r, np.abs(x) - arm)
        return np.minimum(h, v)
    if shape == "star":
        # Radius oscillates between the tips (r) and the notches (0.45 r), five tips.
        phi = np.arctan2(y, x)
        frac = np.abs(((phi * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a tip, 0 at a notch
        rho = (0.45 + 0.55 * frac) * r * 1.05
        return (d - rho) * 0.75  # the boundary is slanted, so distance shrinks by ~cos
    if shape == "crescent":
        d2 = np.hypot(x - 0.45 * r, y)
        return np.maximum(d - r, 0.8 * r - d2)
    raise KeyError(f"unknown shape {shape!r}; known: {SHAPES}")


def shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, theta: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of each pixel."""
    return np.clip(0.5 - shape_sdf(shape, dx, dy, r, theta), 0.0, 1.0)
