from polypsi.job import run
from polypsi.croptable import patch_embeddings_stage

run(snakemake, patch_embeddings_stage)  # noqa: F821
