# Shared helpers: the typed config, output paths and the params each rule receives.
# Parsing stays cheap (no torch import): every cluster job re-parses the Snakefile.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # run from a checkout without installing

import hashlib

from snakemake.utils import validate
from polypsi import __version__
from polypsi.config import RUNTIME_KEYS, ConfigError, load_config

try:
    cfg = load_config(config, "merged --configfile / config/config.yaml")
except ConfigError as err:
    sys.stderr.write(f"\n{err}\n\n")
    sys.exit(1)
# The typed config coerces values (e.g. --config's strings); the schema checks what it produced.
validate(cfg.model_dump(mode="json"), str(Path(workflow.basedir) / "config" / "schema.json"), set_default=False)

USES_WORLD = "world" in (cfg.data.source, cfg.model.source, cfg.embedder.source) or (
    cfg.secondary_embedder is not None and cfg.secondary_embedder.source == "world"
)
LIB = Path(workflow.basedir) / "src" / "polypsi"


def code_version(*patterns):
    """Hash of library sources, as a param: editing the code a rule runs reruns that rule."""
    h = hashlib.sha1()
    for pattern in patterns:
        for p in sorted(LIB.glob(pattern)):
            h.update(p.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


WORLD_CODE = ["world/*.py"] if USES_WORLD else []
CODE_MINING = code_version("mining.py", "models.py", "crops.py", *WORLD_CODE)
CODE_EMBED = code_version("embedding.py", "crops.py", "prompts.py", *WORLD_CODE)
CODE_STATS = code_version("stats/*.py", "scoring.py", "calibration.py")
POLYPSI_VERSION = code_version("**/*.py")  # reports and interventions: any library change

R = f"results/{cfg.run_name}"
LAYERS = list(cfg.model.layers)
IMAGE_SHARDS = list(range(cfg.shards.images))
CHANNEL_SHARDS = list(range(cfg.shards.channels))
DRAW_SHARDS = list(range(cfg.shards.draws))
SCRIPTS = str(Path(workflow.basedir) / "workflow" / "scripts")


wildcard_constraints:
    layer="|".join(LAYERS),
    shard=r"\d+",
    cshard=r"\d+",
    dshard=r"\d+",


def sections(*names, only=None):
    """Config sections as plain data for `params:`: a change to them reruns the rule, others do not.

    `only` narrows a section to the keys the rule reads. Runtime settings (RUNTIME_KEYS: device,
    batch sizes, memory layout) change speed, not results: they are left out here and reach the
    scripts from the full config (polypsi.runtime.stage). The world section is passed only when
    the run uses the planted world.
    """
    out = {}
    for n in names:
        if n == "world" and not USES_WORLD:
            continue
        v = getattr(cfg, n)
        if not hasattr(v, "model_dump"):
            if n not in RUNTIME_KEYS:
                out[n] = v
            continue
        d = v.model_dump(mode="json")
        for k in RUNTIME_KEYS.get(n, ()):
            d.pop(k, None)
        if only and n in only:
            d = {k: d[k] for k in only[n]}
        out[n] = d
    return out


def images_source():
    if cfg.data.source in ("world", "synthetic"):
        return f"{R}/world/images"
    if cfg.data.source == "tiny_imagenet":
        return f"{cfg.data.root}/wnids.txt"
    return []


def all_outputs():
    outs = [f"{R}/report/auroc.csv"]
    outs += expand(f"{R}/{{kind}}/{{layer}}.parquet", kind=["psi", "null_psi", "patches", "clusters"], layer=LAYERS)
    outs += extra_outputs
    return outs


# Other rule files append the final outputs they add to the `all` target here.
extra_outputs = []
