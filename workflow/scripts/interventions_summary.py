from polypsi.interventions import summary_stage
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(
    lambda: summary_stage(smk.input[0], smk.output.csv, smk.output.png, unit=params["unit"],
                          confidence=params["confidence"], log_file=log),
    log,
)
