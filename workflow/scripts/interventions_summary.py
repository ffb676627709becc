from polypsi.job import run
from polypsi.interventions import summary_stage

run(snakemake, summary_stage)  # noqa: F821
