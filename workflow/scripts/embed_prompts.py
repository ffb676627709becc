from polypsi.job import run
from polypsi.prompts import embed_prompts_stage

run(snakemake, embed_prompts_stage)  # noqa: F821
