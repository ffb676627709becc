"""Prompt sets for D: concepts x templates (main set) and an unrelated-domain set (D-null)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config, EmbedderConfig
from .io import write_table
from .runtime import get_logger

PACKAGE_DATA = Path(__file__).parent / "data"


def read_list(spec: str, cfg: Config | None = None, kind: str = "concepts") -> list[str]:
    """Lines of a list file; `builtin:<name>` is shipped data, `world` is the planted world's vocabulary."""
    if spec == "world":
        from . import world

        if cfg is None:
            raise ValueError("a `world` prompt list needs the config")
        return {"concepts": lambda: world.prompt_concepts(cfg.world), "templates": world.templates,
                "null_concepts": lambda: world.null_concepts(cfg.world)}[kind]()
    path = PACKAGE_DATA / spec.removeprefix("builtin:") if spec.startswith("builtin:") else Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"prompt list {spec} ({path}) does not exist; fix prompts.{kind}")
    items = [ln.strip() for ln in path.read_text().splitlines()]
    items = [x for x in items if x and not x.startswith("#")]
    if not items:
        raise ValueError(f"prompt list {path} (prompts.{kind}) is empty")
    return items


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for x in items:
        key = x.strip().lower()
        if key not in seen:
            seen.add(key)
            out.append(x.strip())
    return out


def prompt_table(cfg: Config, class_names: list[str]) -> pd.DataFrame:
    """One row per prompt: set, concept, concept_id, template, prompt."""
    p = cfg.prompts
    templates = read_list(p.templates, cfg, "templates")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"prompts.templates: every template needs exactly one '{{}}'; these do not: {bad}")
    # Folder names such as "fire_salamander" become "fire salamander" in the prompts.
    names = [n.replace("_", " ") for n in class_names] if p.include_class_names else []
    concepts = names + read_list(p.concepts, cfg, "concepts")
    null = read_list(p.null_concepts, cfg, "null_concepts")
    rows = []
    for set_name, items in (("main", _dedupe(concepts)), ("null", _dedupe(null))):
        for cid, c in enumerate(items):
            for t in templates:
                rows.append((set_name, c, cid, t, t.format(c)))
    df = pd.DataFrame(rows, columns=["set", "concept", "concept_id", "template", "prompt"])
    df["concept_id"] = df["concept_id"].astype(np.int64)
    return df


def embed_prompts(cfg: Config, emb_cfg: EmbedderConfig, dataset: pd.DataFrame, out: str, device,
                  log_file: str | None = None) -> pd.DataFrame:
    from .embedding import load_embedder

    log = get_logger("polypsi.prompts", log_file)
    names = dataset.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    df = prompt_table(cfg, names)
    counts = df.groupby("set")["concept"].nunique().to_dict()
    log.info("prompts: %d main concepts, %d null concepts, %d templates, %d prompts",
             counts.get("main", 0), counts.get("null", 0), df["template"].nunique(), len(df))
    emb = load_embedder(emb_cfg, cfg, device).encode_texts(df["prompt"].tolist())
    write_table(df, out, embeddings={"embedding": emb})
    return df
