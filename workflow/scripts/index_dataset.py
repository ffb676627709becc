from polypsi.job import run
from polypsi.data import index_dataset_stage

run(snakemake, index_dataset_stage)  # noqa: F821
