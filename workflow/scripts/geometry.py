from polypsi.job import run
from polypsi.crops import geometry_stage

run(snakemake, geometry_stage)  # noqa: F821
