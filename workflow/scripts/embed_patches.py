from polypsi.job import run
from polypsi.croptable import embed_patches_stage

run(snakemake, embed_patches_stage)  # noqa: F821
