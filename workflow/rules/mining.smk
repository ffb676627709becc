# Layer geometry, streaming top-K over image shards, exact merge per layer.


rule geometry:
    input:
        **asset_inputs("model"),
    output:
        geometry=f"{R}/geometry.json",
    params:
        config=settings("model", "crops", kinds=["model"]),
        code=code("geometry"),
    # Gradients through the model for a few hundred probe images: on the run's device, with the cores of a
    # mining job (embedding waits for it).
    threads: 2
    resources:
        gpu=GPU,
    log:
        f"{R}/logs/geometry.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("geometry")


rule mine_topk:
    input:
        **asset_inputs("model"),
        dataset=f"{R}/dataset.parquet",
    output:
        # one table per layer, in model.layers order
        tables=expand(f"{R}/mining/shard{{{{shard}}}}/{{layer}}.parquet", layer=LAYERS),
    params:
        config=settings("model", "mining", "shards.images", kinds=["model"]),
        code=code("mine_topk"),
    threads: 2
    resources:
        gpu=GPU,
    log:
        f"{R}/logs/mine_topk/shard{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/mine_topk/shard{{shard}}.tsv"
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("mine_topk")


rule merge_topk:
    input:
        shards=expand(f"{R}/mining/shard{{shard}}/{{{{layer}}}}.parquet", shard=IMAGE_SHARDS),
    output:
        topk=f"{R}/topk/{{layer}}.parquet",
    params:
        config=settings("mining.topk"),
        code=code("merge_topk"),
    log:
        f"{R}/logs/merge_topk/{{layer}}.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("merge_topk")
