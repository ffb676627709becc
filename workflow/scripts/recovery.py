from polypsi.job import run
from polypsi.validation.recovery import recovery_stage

run(snakemake, recovery_stage)  # noqa: F821
