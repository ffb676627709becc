# The planted world's own report: how well the run recovers the channels it planted (a plug-in's rule;
# it runs only when both the data and the model come from the world).

if cfg.data.source == "world" and cfg.model.source == "world":
    UNIT_TRUTH = [f"{R}/truth/units.csv"]

    rule planted_units:
        output:
            truth=f"{R}/truth/units.csv",
        params:
            config=settings("world", "model"),
            code=code("planted_units"),
        log:
            f"{R}/logs/planted_units.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("planted_units")

    rule ground_truth:
        input:
            psi=expand(f"{R}/psi/{{layer}}.parquet", layer=LAYERS),
            clusters=expand(f"{R}/clusters/{{layer}}.parquet", layer=LAYERS),
            patches=expand(f"{R}/patches/{{layer}}.parquet", layer=LAYERS),
            dataset=f"{R}/dataset.parquet",
            world=f"{R}/world/world.json",
            geometry=f"{R}/geometry.json",
        output:
            csv=report(f"{R}/report/ground_truth.csv", caption="../report/ground_truth.rst", category="Planted world"),
            png=report(f"{R}/report/ground_truth.png", caption="../report/ground_truth.rst", category="Planted world"),
            channels=f"{R}/report/ground_truth_channels.csv",
        params:
            config=settings("world", "model", "run_name"),
            code=code("ground_truth"),
        log:
            f"{R}/logs/ground_truth.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("ground_truth")

    extra_outputs += [f"{R}/report/ground_truth.csv"]
