# Causal patch-swap interventions (paper section 5.3): trials on the highest-index channels of one layer,
# then the per-condition statistics (paired t-tests of Aligned against each control) and a bar chart.
# docs/interventions.md describes the conditions, the normalisation and every column.


rule interventions:
    input:
        **asset_inputs("model"),
        psi=f"{R}/psi/{{layer}}.parquet",
        patches=f"{R}/patches/{{layer}}.parquet",
        dataset=f"{R}/dataset.parquet",
        geometry=f"{R}/geometry.json",
    output:
        trials=f"{R}/interventions/{{layer}}.parquet",
    params:
        # model, mining and the model source's sections: what load_model reads; the t-test settings are the summary's
        config=settings(
            "model",
            "mining",
            "interventions",
            kinds=["model"],
            without=("interventions.test_unit", "interventions.confidence"),
        ),
        code=code("interventions"),
    threads: 2
    resources:
        gpu=GPU,
    log:
        f"{R}/logs/interventions/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/interventions/{{layer}}.tsv"
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("interventions")


rule interventions_summary:
    input:
        trials=f"{R}/interventions/{cfg.intervention_layer}.parquet",
    output:
        csv=report(
            f"{R}/report/interventions.csv",
            caption=caption("interventions"),
            category="5. Interventions",
        ),
        png=report(
            f"{R}/report/interventions.png",
            caption=caption("interventions"),
            category="5. Interventions",
        ),
    params:
        config=settings("interventions.test_unit", "interventions.confidence"),
        code=code("interventions_summary"),
    log:
        f"{R}/logs/interventions_summary.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("interventions_summary")


if cfg.interventions.enabled:
    extra_outputs += [f"{R}/report/interventions.csv", f"{R}/report/interventions.png"]
