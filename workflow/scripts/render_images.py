from polypsi.job import run
from polypsi.data import render_images_stage

run(snakemake, render_images_stage)  # noqa: F821
