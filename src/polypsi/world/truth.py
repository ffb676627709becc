"""The planted ground truth: which concepts each channel of the world model responds to.

The plan is a pure function of the world config; `build_model` turns it into weights
and `ground_truth` into a table, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from polypsi.config import WorldConfig
from polypsi.world.spec import STREAM_MODEL, WorldSpec, world_spec

LAYERS = ("layer3", "layer4")
TEMPLATE_RADII = (4.0, 6.0, 9.0, 13.0)  # detector scales, px of a 64 px image
GAIN_EXP = 0.25  # larger instances give larger responses: gain = (radius / 13) ** GAIN_EXP
P_THREE = 0.3  # share of polysemantic channels planted on three concepts (the rest: two)


def scale_gain(radius: float) -> float:
    return (radius / TEMPLATE_RADII[-1]) ** GAIN_EXP


@dataclass(frozen=True)
class ChannelPlan:
    layer: str
    channel: int
    kind: str  # mono | poly | dead
    concepts: tuple[int, ...]  # indices into WorldSpec.concepts
    weights: tuple[float, ...]  # readout weight per planted concept
    names: tuple[str, ...]
    copy: bool = False  # layer3 concept detector that layer4 reads

    def as_row(self) -> dict:
        return {
            "layer": self.layer,
            "channel": self.channel,
            "kind": self.kind,
            "n_concepts": len(self.concepts),
            "concepts": ";".join(self.names),
        }


def _counts(world: WorldConfig) -> tuple[int, int, int]:
    c = world.channels
    n_poly = int(round(world.polysemantic_share * c))
    n_dead = int(round(world.dead_share * c))
    n_mono = c - n_poly - n_dead
    if n_mono < 0:
        raise ValueError(
            f"world.polysemantic_share ({world.polysemantic_share}) + world.dead_share ({world.dead_share}) "
            "exceed 1; lower one of them"
        )
    return n_mono, n_poly, n_dead


def _partners(first: int, k: int, spec: WorldSpec, similarity: float, rng: np.random.Generator) -> list[int]:
    """Concepts that share a polysemantic channel with `first`.

    Unrelated (no shared colour or shape) by default; with probability `similarity`
    each partner is related instead, a deliberately hard channel.
    """
    chosen = [first]
    cs = spec.concepts
    for _ in range(k - 1):
        rest = [i for i in range(len(cs)) if i not in chosen]
        related = [i for i in rest if any(cs[i].related(cs[j]) for j in chosen)]
        unrelated = [i for i in rest if i not in related]
        pool = related if (rng.random() < similarity and related) else (unrelated or rest)
        chosen.append(int(pool[rng.integers(len(pool))]))
    return chosen


def plan_channels(world: WorldConfig) -> list[ChannelPlan]:
    """Every channel of layer3 and layer4 with its kind, concepts and readout weights."""
    spec = world_spec(world)
    n = len(spec.concepts)
    n_mono, n_poly, n_dead = _counts(world)
    if n_mono < n:
        raise ValueError(
            f"layer3 needs one monosemantic detector per concept ({n}) but only has {n_mono} monosemantic "
            f"channels; raise world.channels ({world.channels}) or lower world.polysemantic_share/dead_share"
        )
    rng = np.random.default_rng([world.seed, STREAM_MODEL])
    plans: list[ChannelPlan] = []
    for layer in LAYERS:
        order = list(rng.permutation(n))  # concepts cycled through, so each gets channels
        entries: list[tuple[str, list[int], bool]] = []
        if layer == "layer3":
            entries += [("mono", [i], True) for i in range(n)]
        while sum(e[0] == "mono" for e in entries) < n_mono:
            entries.append(("mono", [int(order[len(entries) % n])], False))
        for j in range(n_poly):
            k = 3 if rng.random() < P_THREE else 2
            entries.append(("poly", _partners(int(order[j % n]), k, spec, world.concept_similarity, rng), False))
        entries += [("dead", [], False)] * n_dead
        slots = rng.permutation(len(entries))  # channel index of each entry: kinds are interleaved
        for (kind, cs, copy), ch in zip(entries, slots):
            # Poly channels weigh their concepts a little unevenly (0.9-1.1): realistic, and the
            # top activations then split unevenly between concepts (some channels become hard).
            jitter = rng.uniform(0.9, 1.1, len(cs)) if kind == "poly" else np.ones(len(cs))
            plans.append(
                ChannelPlan(
                    layer=layer,
                    channel=int(ch),
                    kind=kind,
                    concepts=tuple(cs),
                    weights=tuple(float(w) for w in jitter),
                    names=tuple(spec.concepts[i].name for i in cs),
                    copy=copy,
                )
            )
    return sorted(plans, key=lambda p: (LAYERS.index(p.layer), p.channel))


def ground_truth(world: WorldConfig) -> pd.DataFrame:
    """One row per planted channel: layer, channel, kind, n_concepts, concepts (';'-joined names)."""
    return pd.DataFrame([p.as_row() for p in plan_channels(world)])
