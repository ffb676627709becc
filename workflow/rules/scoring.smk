# Raw S, Q, D for the real data (draw 0) and the null draws; calibration per layer.


rule score:
    input:
        topk=f"{R}/topk/{{layer}}.parquet",
        embeddings=f"{R}/embeddings/{{layer}}/shard{{cshard}}.parquet",
        dataset=f"{R}/dataset.parquet",
        prompts=f"{R}/prompts/text.parquet",
    output:
        scores=f"{R}/scores/{{layer}}/shard{{cshard}}/draws{{dshard}}.parquet",
    params:
        config=settings("stats", "nulls", "shards.draws"),
        code=code("score"),
    # First of the GPU jobs when they outnumber the GPU slots: it starts one of the run's longest chains of
    # jobs (benchmarks/critical_path.py).
    priority: 1
    threads: 1
    resources:
        gpu=GPU,  # batched scoring runs on `device` (CUDA with auto when present)
    log:
        f"{R}/logs/score/{{layer}}_shard{{cshard}}_draws{{dshard}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{layer}}_shard{{cshard}}_draws{{dshard}}.tsv"
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("score")


rule calibrate:
    # Synthetic OR-units (or_* inputs) are calibrated here too, in their own rows (validation.smk).
    input:
        **(
            dict(
                or_scores=expand(f"{R}/or_units/{{{{layer}}}}/scores/draws{{dshard}}.parquet", dshard=DRAW_SHARDS),
                or_units=f"{R}/or_units/{{layer}}/units.parquet",
                or_topk=f"{R}/or_units/{{layer}}/topk.parquet",
                or_embeddings=f"{R}/or_units/{{layer}}/embeddings.parquet",
            )
            if OR_UNITS
            else {}
        ),
        **(dict(neuron_embeddings=f"{R}/neuron_embeddings/{{layer}}.parquet") if cfg.neuron_embeddings.enabled else {}),
        scores=expand(
            f"{R}/scores/{{{{layer}}}}/shard{{cshard}}/draws{{dshard}}.parquet",
            cshard=CHANNEL_SHARDS,
            dshard=DRAW_SHARDS,
        ),
        embeddings=expand(f"{R}/embeddings/{{{{layer}}}}/shard{{cshard}}.parquet", cshard=CHANNEL_SHARDS),
        topk=f"{R}/topk/{{layer}}.parquet",
        dataset=f"{R}/dataset.parquet",
        geometry=f"{R}/geometry.json",
    output:
        psi=f"{R}/psi/{{layer}}.parquet",
        null_psi=f"{R}/null_psi/{{layer}}.parquet",
        patches=f"{R}/patches/{{layer}}.parquet",
        clusters=f"{R}/clusters/{{layer}}.parquet",
    params:
        # Reads the draws' scores, not how they were drawn: only M and the calibration settings.
        # (and how the neuron-embedding view is clustered: the k-means settings, their seeds, Foote's threshold)
        config=settings(
            "nulls.m",
            "calibration",
            "index",
            *(["stats", "nulls.seed", "neuron_embeddings.foote_threshold"] if cfg.neuron_embeddings.enabled else []),
        ),
        code=code("calibrate"),
    log:
        f"{R}/logs/calibrate/{{layer}}.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("calibrate")
