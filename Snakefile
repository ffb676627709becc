# polypsi: the null-calibrated Polysemanticity Index for every channel of the named layers.
#   snakemake --cores 16 --resources gpu=1                        (paper setup, config/config.yaml)
#   snakemake --cores 2 --configfile config/smoke.yaml            (offline smoke run)
from pathlib import Path

from snakemake.utils import min_version

min_version("8.0")


configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/mining.smk"
include: "workflow/rules/embedding.smk"
include: "workflow/rules/neuron_embeddings.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/interventions.smk"
include: "workflow/rules/validation.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
