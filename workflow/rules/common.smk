# Shared helpers: the typed config, output paths and the params each rule receives.
# Parsing stays cheap (no torch import): every cluster job re-parses the Snakefile.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # run from a checkout without installing

from snakemake.utils import validate
from polypsi import __version__ as POLYPSI_VERSION
from polypsi.config import ConfigError, load_config

try:
    cfg = load_config(config, "merged --configfile / config/config.yaml")
except ConfigError as err:
    sys.stderr.write(f"\n{err}\n\n")
    sys.exit(1)
validate(config, str(Path(workflow.basedir) / "config" / "schema.json"), set_default=False)

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


def sections(*names):
    """Config sections as plain data for `params:`: a change to them reruns the rule, others do not."""
    out = {}
    for n in names:
        v = getattr(cfg, n)
        out[n] = v.model_dump(mode="json") if hasattr(v, "model_dump") else v
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
