from polypsi.job import run
from polypsi.interventions import interventions_stage

run(snakemake, interventions_stage)  # noqa: F821
