from polypsi.job import run
from polypsi.scoring import calibrate_stage

run(snakemake, calibrate_stage)  # noqa: F821
