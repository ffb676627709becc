# CLIP embeddings of the mined crops and of the prompt sets. A layer's distinct crops (by image and crop box,
# over all its channels) are split into shards.channels embedding jobs, so each is embedded once whatever the
# sharding; patch_embeddings (tables only) then writes every channel shard's (channel, rank) embeddings.


rule embed_patches:
    input:
        **asset_inputs("embedder"),
        topk=f"{R}/topk/{{layer}}.parquet",
        dataset=f"{R}/dataset.parquet",
        geometry=f"{R}/geometry.json",
    output:
        crops=f"{R}/crops/{{layer}}/shard{{cshard}}.parquet",
    params:
        config=settings("embedder", "shards.channels", kinds=["embedder"]),
        code=code("embed_patches"),
    # First of the GPU jobs when they outnumber the GPU slots: it starts one of the run's longest chains of
    # jobs (benchmarks/critical_path.py).
    priority: 1
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


rule patch_embeddings:
    input:
        crops=expand(f"{R}/crops/{{{{layer}}}}/shard{{cshard}}.parquet", cshard=CHANNEL_SHARDS),
        topk=f"{R}/topk/{{layer}}.parquet",
        geometry=f"{R}/geometry.json",
    output:
        embeddings=expand(f"{R}/embeddings/{{{{layer}}}}/shard{{cshard}}.parquet", cshard=CHANNEL_SHARDS),
    params:
        config=settings("shards.channels"),
        code=code("patch_embeddings"),
    log:
        f"{R}/logs/patch_embeddings/{{layer}}.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("patch_embeddings")


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
