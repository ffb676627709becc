# Causal interventions on one layer, two protocols (interventions.protocols): replacement (paper section 5.3,
# trials on the highest-index channels' top sites) and insertion (cluster patches pasted into neutral images,
# giving each channel's causal polysemanticity); then the per-condition statistics, bar charts, the
# per-channel causal table and its agreement with the index (and the planted truth, where there is one).
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
        causal=f"{R}/interventions/{{layer}}_causal.parquet",
    params:
        # model, mining and the model source's sections: what load_model reads; the unit of the summary's
        # t-tests is the summary's (the confidence level also sets the insertion's per-cluster intervals)
        config=settings(
            "model",
            "mining",
            "interventions",
            kinds=["model"],
            without=("interventions.test_unit",),
        ),
        code=code("interventions"),
    # First of the GPU jobs when they outnumber the GPU slots: it starts one of the run's longest chains of
    # jobs (benchmarks/critical_path.py).
    priority: 1
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
        causal=f"{R}/interventions/{cfg.intervention_layer}_causal.parquet",
        truth=UNIT_TRUTH,
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
        insert_png=report(
            f"{R}/report/interventions_insert.png",
            caption=caption("interventions_insert"),
            category="5. Interventions",
        ),
        causal=report(
            f"{R}/report/causal.csv",
            caption=caption("causal"),
            category="5. Interventions",
        ),
        agreement=report(
            f"{R}/report/causal_agreement.csv",
            caption=caption("causal"),
            category="5. Interventions",
        ),
    params:
        config=settings(
            "interventions.test_unit",
            "interventions.confidence",
            "interventions.protocols",
        ),
        code=code("interventions_summary"),
    log:
        f"{R}/logs/interventions_summary.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("interventions_summary")


if cfg.interventions.enabled:
    extra_outputs += [f"{R}/report/interventions.csv", f"{R}/report/interventions.png", f"{R}/report/causal.csv"]
