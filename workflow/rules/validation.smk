# Ground truths: synthetic OR-units on every run, a plug-in's known units where there are some,
# and report/recovery.csv, how well each score separates polysemantic units from single ones.

if OR_UNITS:

    rule or_units:
        input:
            topk=f"{R}/topk/{{layer}}.parquet",
            embeddings=expand(f"{R}/embeddings/{{{{layer}}}}/shard{{cshard}}.parquet", cshard=CHANNEL_SHARDS),
            truth=UNIT_TRUTH,
        output:
            units=f"{R}/or_units/{{layer}}/units.parquet",
            topk=f"{R}/or_units/{{layer}}/topk.parquet",
            embeddings=f"{R}/or_units/{{layer}}/embeddings.parquet",
        params:
            config=settings(
                "validation.or_units_per_layer",
                "validation.or_far_quantile",
                "validation.seed",
                "mining.one_site_per_image",
            ),
            code=code("or_units"),
        log:
            f"{R}/logs/or_units/{{layer}}.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("or_units")

    rule score_or_units:
        input:
            topk=f"{R}/or_units/{{layer}}/topk.parquet",
            embeddings=f"{R}/or_units/{{layer}}/embeddings.parquet",
            dataset=f"{R}/dataset.parquet",
            prompts=f"{R}/prompts/text.parquet",
        output:
            scores=f"{R}/or_units/{{layer}}/scores/draws{{dshard}}.parquet",
        params:
            config=settings("stats", "nulls", "shards.draws"),
            code=code("score"),
        threads: 1
        resources:
            gpu=GPU,  # batched scoring runs on `device` (CUDA with auto when present)
        log:
            f"{R}/logs/score_or_units/{{layer}}_draws{{dshard}}.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("score")


rule recovery:
    input:
        psi=expand(f"{R}/psi/{{layer}}.parquet", layer=LAYERS),
        truth=UNIT_TRUTH,
    output:
        csv=report(f"{R}/report/recovery.csv", caption=caption("recovery"), category="5. Ground truth"),
        png=report(f"{R}/report/recovery.png", caption=caption("recovery"), category="5. Ground truth"),
    params:
        config=settings("validation.seed", "validation.bootstrap", "model.layers", "run_name"),
        code=code("recovery"),
    log:
        f"{R}/logs/recovery.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("recovery")


extra_outputs += [f"{R}/report/recovery.csv"]
