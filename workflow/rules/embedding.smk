# CLIP embeddings of the mined crops (per layer x channel shard) and of the prompt sets.


rule embed_patches:
    input:
        topk=f"{R}/topk/{{layer}}.parquet",
        dataset=f"{R}/dataset.parquet",
        geometry=f"{R}/geometry.json",
    output:
        f"{R}/embeddings/{{layer}}/shard{{cshard}}.parquet",
    params:
        **sections("embedder", "world", "device"),
        code=CODE_EMBED,
        n_shards=cfg.shards.channels,
    threads: 2
    resources:
        gpu=1,
    log:
        f"{R}/logs/embed_patches/{{layer}}_shard{{cshard}}.log",
    benchmark:
        f"{R}/benchmarks/embed_patches/{{layer}}_shard{{cshard}}.tsv"
    script:
        f"{SCRIPTS}/embed_patches.py"


rule embed_prompts:
    input:
        dataset=f"{R}/dataset.parquet",
    output:
        f"{R}/prompts/text.parquet",
    params:
        **sections("embedder", "prompts", "world", "device"),
        code=CODE_EMBED,
    threads: 2
    resources:
        gpu=1,
    log:
        f"{R}/logs/embed_prompts.log",
    script:
        f"{SCRIPTS}/embed_prompts.py"
