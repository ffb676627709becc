from polypsi.job import run
from polypsi.neuron_embeddings import neuron_embeddings_stage

run(snakemake, neuron_embeddings_stage)  # noqa: F821
