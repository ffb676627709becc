from polypsi.job import run
from polypsi.interventions import interventions_summary_stage

run(snakemake, interventions_summary_stage)  # noqa: F821
