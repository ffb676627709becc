# Report: AUROC of real channels against null neurons (more analyses are added here).


rule report:
    input:
        psi=expand(f"{R}/psi/{{layer}}.parquet", layer=LAYERS),
        null_psi=expand(f"{R}/null_psi/{{layer}}.parquet", layer=LAYERS),
    output:
        auroc=f"{R}/report/auroc.csv",
    params:
        layers=LAYERS,
    log:
        f"{R}/logs/report.log",
    script:
        f"{SCRIPTS}/report.py"
