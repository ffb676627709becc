"""Prompt sets for D: concepts x templates (main set) and an unrelated-domain set (D-null)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import sources
from .config import Config, EmbedderConfig
from .embedding import load_embedder
from .errors import ConfigError
from .io import read_table, write_table
from .runtime import get_logger

PACKAGE_DATA = Path(__file__).parent / "data"


def read_list(spec: str, cfg: Config | None = None, kind: str = "concepts") -> list[str]:
    """Lines of a list file; `builtin:<name>` is shipped data; a registered vocabulary name (e.g. `world`)
    asks that source for its list."""
    if spec in sources.names("vocabulary"):
        if cfg is None:
            raise ConfigError(f"prompts.{kind}: the `{spec}` vocabulary needs the run's config")
        return sources.get("vocabulary", spec).load()(cfg, kind)
    path = PACKAGE_DATA / spec.removeprefix("builtin:") if spec.startswith("builtin:") else Path(spec)
    if not path.is_file():
        raise ConfigError(f"prompt list {spec} ({path}) does not exist; fix prompts.{kind}")
    items = [ln.strip() for ln in path.read_text().splitlines()]
    items = [x for x in items if x and not x.startswith("#")]
    if not items:
        raise ConfigError(f"prompt list {path} (prompts.{kind}) is empty")
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
        raise ConfigError(f"prompts.templates: every template needs exactly one '{{}}'; these do not: {bad}")
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


def embed_prompts(emb_cfg: EmbedderConfig, cfg: Config, dataset: pd.DataFrame, device, log=None):
    """The prompt table of the run's class names and concept lists, and its text embeddings [n, d]."""
    log = log or get_logger("polypsi.prompts")
    names = dataset.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    df = prompt_table(cfg, names)
    counts = df.groupby("set")["concept"].nunique().to_dict()
    log.info("prompts: %d main concepts, %d null concepts, %d templates, %d prompts",
             counts.get("main", 0), counts.get("null", 0), df["template"].nunique(), len(df))
    return df, load_embedder(emb_cfg, cfg, device).encode_texts(df["prompt"].tolist())


def embed_prompts_stage(job) -> None:
    """Rule embed_prompts (and embed_prompts_secondary)."""
    df, emb = embed_prompts(job.cfg.embedder, job.cfg, read_table(job.input.dataset), job.device,
                            job.logger("polypsi.prompts"))
    write_table(df, job.output.prompts, embeddings={"embedding": emb})
