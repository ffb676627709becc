# Causal patch-swap interventions (paper section 5.3): trials on the highest-PSI channels of one layer,
# then the per-condition statistics (paired t-tests of Aligned against each control) and a bar chart.
# docs/interventions.md describes the conditions, the normalisation and every column.


rule interventions:
    input:
        psi=f"{R}/psi/{{layer}}.parquet",
        patches=f"{R}/patches/{{layer}}.parquet",
        dataset=f"{R}/dataset.parquet",
        geometry=f"{R}/geometry.json",
    output:
        f"{R}/interventions/{{layer}}.parquet",
    params:
        # model/world/mining: what load_model reads (weights, input size, normalisation, channels_last)
        **sections("model", "world", "mining", "device", "interventions"),
        code=POLYPSI_VERSION,
    threads: 2
    resources:
        gpu=1,
    log:
        f"{R}/logs/interventions/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/interventions/{{layer}}.tsv"
    script:
        f"{SCRIPTS}/interventions.py"


rule interventions_summary:
    input:
        f"{R}/interventions/{cfg.intervention_layer}.parquet",
    output:
        csv=report(
            f"{R}/report/interventions.csv",
            caption=str(Path(workflow.basedir) / "workflow" / "report" / "interventions.rst"),
            category="5. Interventions",
        ),
        png=report(
            f"{R}/report/interventions.png",
            caption=str(Path(workflow.basedir) / "workflow" / "report" / "interventions.rst"),
            category="5. Interventions",
        ),
    params:
        unit=cfg.interventions.test_unit,
        confidence=cfg.interventions.confidence,
        code=POLYPSI_VERSION,
    log:
        f"{R}/logs/interventions_summary.log",
    script:
        f"{SCRIPTS}/interventions_summary.py"


if cfg.interventions.enabled:
    extra_outputs += [f"{R}/report/interventions.csv", f"{R}/report/interventions.png"]
