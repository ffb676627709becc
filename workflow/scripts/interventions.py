from polypsi.interventions import intervention_stage
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(
    lambda: intervention_stage(smk.input.psi, smk.input.patches, smk.input.dataset, smk.input.geometry,
                               smk.output[0], smk.wildcards.layer, cfg, log_file=log),
    log,
)
