"""What a world contains (its concepts and classes), and the random streams derived from its seed.

Shared by the renderer (render.py), the planted ground truth (truth.py) and the model (model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polypsi.config import WorldConfig
from polypsi.world.concepts import Concept, choose_concepts

# Independent random streams derived from the world seed.
STREAM_CONCEPTS, STREAM_SCENES, STREAM_MODEL = 0, 1, 2


@dataclass(frozen=True)
class WorldSpec:
    """What a world contains: its concepts, and the concept behind each class."""

    concepts: tuple[Concept, ...]
    class_concepts: tuple[int, ...]  # class k -> index into `concepts` of its main object

    @property
    def class_names(self) -> list[str]:
        return [self.concepts[i].slug for i in self.class_concepts]

    def concept_names(self) -> list[str]:
        return [c.name for c in self.concepts]


def world_spec(world: WorldConfig) -> WorldSpec:
    if world.n_classes > world.n_concepts:
        raise ValueError(
            f"world.n_classes ({world.n_classes}) must be <= world.n_concepts ({world.n_concepts}): "
            "each class is named after the concept of its main object"
        )
    rng = np.random.default_rng([world.seed, STREAM_CONCEPTS])
    concepts = tuple(choose_concepts(world.n_concepts, world.concept_similarity, rng))
    # The first n_classes concepts are main objects; the rest appear only as distractors.
    return WorldSpec(concepts=concepts, class_concepts=tuple(range(world.n_classes)))
