# Layer geometry, streaming top-K over image shards, exact merge per layer.


rule geometry:
    output:
        f"{R}/geometry.json",
    params:
        **sections("model", "world", "crops"),
        code=CODE_MINING,
    log:
        f"{R}/logs/geometry.log",
    script:
        f"{SCRIPTS}/geometry.py"


rule mine_topk:
    input:
        dataset=f"{R}/dataset.parquet",
    output:
        expand(f"{R}/mining/shard{{{{shard}}}}/{{layer}}.parquet", layer=LAYERS),
    params:
        **sections("model", "world", "mining", "device"),
        code=CODE_MINING,
        n_shards=cfg.shards.images,
        layers=LAYERS,
    threads: 2
    resources:
        gpu=1,
    log:
        f"{R}/logs/mine_topk/shard{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/mine_topk/shard{{shard}}.tsv"
    script:
        f"{SCRIPTS}/mine_topk.py"


rule merge_topk:
    input:
        expand(f"{R}/mining/shard{{shard}}/{{{{layer}}}}.parquet", shard=IMAGE_SHARDS),
    output:
        f"{R}/topk/{{layer}}.parquet",
    params:
        topk=cfg.mining.topk,
    log:
        f"{R}/logs/merge_topk/{{layer}}.log",
    script:
        f"{SCRIPTS}/merge_topk.py"
