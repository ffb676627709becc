"""Planted and structure-free inputs for the tests and the benchmark (no model needed).

A shared dictionary of concept directions plays CLIP's role: a channel's patches are
noisy copies of a few concept directions plus a common offset (CLIP image embeddings
share a strong mean direction), and each main prompt is its concept's direction seen
through a template. The unrelated-domain prompts are directions no patch is built from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .text import TextBank


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World:
    concepts: np.ndarray  # [C, d] unit concept directions
    common: np.ndarray  # [d] shared offset direction of all patches
    text: TextBank


def make_world(
    rng: np.random.Generator,
    d: int = 512,
    n_concepts: int = 40,
    n_templates: int = 3,
    n_null_concepts: int = 80,
    template_noise: float = 0.3,
) -> World:
    """Concept directions and a prompt bank: main prompts name them, null prompts name nothing."""
    concepts = _unit(rng.standard_normal((n_concepts, d)))
    common = _unit(rng.standard_normal(d))

    def prompts(dirs):
        e = dirs[:, None, :] + template_noise * rng.standard_normal((len(dirs), n_templates, d)) / np.sqrt(d)
        return _unit(e.reshape(-1, d)), np.repeat(np.arange(len(dirs)), n_templates)

    emb, ids = prompts(concepts)
    null_emb, null_ids = prompts(_unit(rng.standard_normal((n_null_concepts, d))))
    text = TextBank(
        emb=emb, concept_id=ids, concepts=[f"concept{c}" for c in range(n_concepts)],
        null_emb=null_emb, null_concept_id=null_ids, null_concepts=[f"unrelated{c}" for c in range(n_null_concepts)],
    )
    return World(concepts, common, text)


def planted_channels(
    rng: np.random.Generator,
    world: World,
    n: int,
    k: int,
    K: int = 50,
    separation: float = 1.0,
    common: float = 1.0,
    label_noise: float = 0.0,
    n_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n channels whose K patches form k clusters around random concept directions.

    A patch is unit(common * c0 + separation * concept + noise), noise ~ N(0, I/d) (norm ~ 1),
    so `separation` is the centre's size relative to the noise; k = 1 or separation = 0 is
    structure-free. Class labels follow the cluster, except a `label_noise` share drawn at random.
    Returns (Z [n, K, d] float32, labels [n, K], true clusters [n, K]).
    """
    d = world.concepts.shape[1]
    Z = np.empty((n, K, d), dtype=np.float32)
    labels = np.empty((n, K), dtype=np.int64)
    truth = np.empty((n, K), dtype=np.int64)
    for i in range(n):
        chosen = rng.choice(len(world.concepts), size=k, replace=False)
        member = np.concatenate([np.full(len(part), j) for j, part in enumerate(np.array_split(np.arange(K), k))])
        x = common * world.common + separation * world.concepts[chosen][member]
        Z[i] = _unit(x + rng.standard_normal((K, d)) / np.sqrt(d))
        cls = rng.choice(n_classes, size=k, replace=False)[member]
        flip = rng.random(K) < label_noise
        cls[flip] = rng.integers(0, n_classes, flip.sum())
        labels[i], truth[i] = cls, member
    return Z, labels, truth


def noise_channels(
    rng: np.random.Generator, n: int, K: int = 50, d: int = 512, decay: float = 0.0, common: float = 0.0,
    n_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Structure-free channels: Gaussian patches, random labels.

    The spread has total variance 1 and spectrum ~ i^-decay along the coordinate axes; `common`
    is the length of an offset along a random direction (CLIP embeddings share a mean direction).
    """
    scale = np.arange(1, d + 1, dtype=float) ** -decay
    scale *= np.sqrt(d) / np.linalg.norm(scale)
    Z = rng.standard_normal((n, K, d)) * scale / np.sqrt(d) + common * _unit(rng.standard_normal(d))
    return _unit(Z).astype(np.float32), rng.integers(0, n_classes, (n, K))
