# CLIP embeddings of the mined crops (per layer x channel shard) and of the prompt sets.


rule embed_patches:
    input:
        **asset_inputs("embedder"),
        topk=f"{R}/topk/{{layer}}.parquet",
        dataset=f"{R}/dataset.parquet",
        geometry=f"{R}/geometry.json",
    output:
        embeddings=f"{R}/embeddings/{{layer}}/shard{{cshard}}.parquet",
    params:
        config=settings("embedder", "shards.channels", kinds=["embedder"]),
        code=code("embed_patches"),
    threads: 2
    resources:
        gpu=GPU,
    log:
        f"{R}/logs/embed_patches/{{layer}}_shard{{cshard}}.log",
    benchmark:
        f"{R}/benchmarks/embed_patches/{{layer}}_shard{{cshard}}.tsv"
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("embed_patches")


rule embed_prompts:
    input:
        **asset_inputs("embedder", "prompts"),
        dataset=f"{R}/dataset.parquet",
    output:
        prompts=f"{R}/prompts/text.parquet",
    params:
        config=settings("embedder", "prompts", kinds=["embedder", "vocabulary"]),
        code=code("embed_prompts"),
    threads: 2
    resources:
        gpu=GPU,
    log:
        f"{R}/logs/embed_prompts.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("embed_prompts")
