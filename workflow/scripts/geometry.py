from polypsi.job import run
from polypsi.geometry import geometry_stage

run(snakemake, geometry_stage)  # noqa: F821
