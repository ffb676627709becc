"""The prompt embeddings D is measured against (main set) and the unrelated-domain set of its null."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("set", "concept", "concept_id", "template", "prompt")


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def concept_embeddings(emb: np.ndarray, concept_id: np.ndarray, n_concepts: int) -> np.ndarray:
    """[C, d] unit mean of each concept's prompt embeddings (CLIP zero-shot practice: templates averaged)."""
    sums = np.zeros((n_concepts, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, concept_id, emb.astype(np.float64))
    return _normalise(sums)


def _names(part: pd.DataFrame, which: str) -> list[str]:
    pairs = part[["concept_id", "concept"]].drop_duplicates()
    if pairs.concept_id.duplicated().any():
        bad = pairs[pairs.concept_id.duplicated(keep=False)].sort_values("concept_id").head(4)
        raise ValueError(f"prompts: {which} concept_id maps to several concept names: {bad.to_dict('records')}")
    ids = np.sort(pairs.concept_id.to_numpy())
    if len(ids) and not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"prompts: {which} concept_id must run 0..{len(ids) - 1} without gaps; got {ids[:10].tolist()}...")
    return pairs.sort_values("concept_id").concept.astype(str).tolist()


@dataclass
class TextBank:
    emb: np.ndarray  # [P, d] float32 unit main prompt embeddings
    concept_id: np.ndarray  # [P] int64
    concepts: list[str]
    null_emb: np.ndarray  # [P0, d] unrelated-domain prompt embeddings
    null_concept_id: np.ndarray  # [P0] int64
    null_concepts: list[str]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.emb = _normalise(np.asarray(self.emb, dtype=np.float32))
        self.concept_id = np.asarray(self.concept_id, dtype=np.int64)
        d = self.emb.shape[1]
        self.null_emb = _normalise(np.asarray(self.null_emb, dtype=np.float32).reshape(-1, d))
        self.null_concept_id = np.asarray(self.null_concept_id, dtype=np.int64)
        for name, e, ids, names in [
            ("main", self.emb, self.concept_id, self.concepts),
            ("null", self.null_emb, self.null_concept_id, self.null_concepts),
        ]:
            if len(e) != len(ids):
                raise ValueError(f"TextBank: {name} set has {len(e)} embeddings but {len(ids)} concept ids")
            if len(ids) and (ids.min() < 0 or ids.max() >= len(names)):
                raise ValueError(f"TextBank: {name} concept ids must lie in 0..{len(names) - 1}")
        if len(set(self.concept_id.tolist())) < 2:
            raise ValueError("TextBank: the main prompt set needs at least 2 concepts for a top-1 minus top-2 gap")

    @classmethod
    def from_table(cls, df: pd.DataFrame, emb: np.ndarray) -> "TextBank":
        """Build from R/prompts/text.parquet (columns set, concept, concept_id, template, prompt) and its embeddings."""
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"prompts table lacks column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
        emb = np.asarray(emb, dtype=np.float32)
        if len(emb) != len(df):
            raise ValueError(f"prompts table has {len(df)} rows but {len(emb)} embeddings")
        unknown = set(df["set"]) - {"main", "null"}
        if unknown:
            raise ValueError(f"prompts table: unknown set value(s) {sorted(unknown)}; use 'main' or 'null'")
        is_main = (df["set"] == "main").to_numpy()
        main, null = df[is_main], df[~is_main]
        return cls(
            emb=emb[is_main],
            concept_id=main.concept_id.to_numpy(np.int64),
            concepts=_names(main, "main"),
            null_emb=emb[~is_main].reshape(-1, emb.shape[1]),
            null_concept_id=null.concept_id.to_numpy(np.int64),
            null_concepts=_names(null, "null") if len(null) else [],
        )

    @property
    def dim(self) -> int:
        return self.emb.shape[1]

    def candidates(self, which: str, level: str) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [n, d], concept index of each row) that a gap is taken over.

        level "concept": one unit-mean embedding per concept; "prompt": every prompt.
        """
        key = (which, level)
        if key not in self._cache:
            emb, ids, names = (
                (self.emb, self.concept_id, self.concepts)
                if which == "main"
                else (self.null_emb, self.null_concept_id, self.null_concepts)
            )
            if level == "concept":
                self._cache[key] = (concept_embeddings(emb, ids, len(names)), np.arange(len(names)))
            elif level == "prompt":
                self._cache[key] = (emb, ids)
            else:
                raise ValueError(f"unknown stats.gap_level {level!r}; use concept or prompt")
        return self._cache[key]
