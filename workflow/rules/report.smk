# Report: the paper's tables and figures (results/<run>/report/), robustness analyses and the neuron browser.
# Every figure and table is marked with report(...) so `snakemake --report report.html` collects it.
# The costly re-scoring of K sensitivity runs in shards like the scoring (k_scores); its calibration and the
# null-seed split are table-only jobs per layer.

REPORT = f"{R}/report"


report: f"{CAPTIONS}/workflow.rst"


rule k_scores:
    # Raw scores of each channel's first k patches, sharded like rule score (k < K: k = K is the run's own scores).
    input:
        topk=f"{R}/topk/{{layer}}.parquet",
        embeddings=f"{R}/embeddings/{{layer}}/shard{{cshard}}.parquet",
        dataset=f"{R}/dataset.parquet",
        prompts=f"{R}/prompts/text.parquet",
    output:
        scores=f"{R}/k_scores/{{layer}}/shard{{cshard}}/draws{{dshard}}.parquet",
    params:
        # Only the report keys it uses: a gallery or browser setting must not redo this costly job.
        config=settings("report.k_values", "report.k_sensitivity_draws", "stats", "nulls", "shards.draws"),
        code=code("k_scores"),
    # First of the GPU jobs when they outnumber the GPU slots: it starts one of the run's longest chains of
    # jobs (benchmarks/critical_path.py).
    priority: 1
    threads: 1
    resources:
        gpu=GPU,  # batched scoring runs on `device` (CUDA with auto when present)
    log:
        f"{R}/logs/k_scores/{{layer}}_shard{{cshard}}_draws{{dshard}}.log",
    benchmark:
        f"{R}/benchmarks/k_scores/{{layer}}_shard{{cshard}}_draws{{dshard}}.tsv"
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("k_scores")


rule k_sensitivity:
    # Tables only: calibrates the k_scores shards, and the run's own scores at the mined K.
    input:
        k_scores=expand(
            f"{R}/k_scores/{{{{layer}}}}/shard{{cshard}}/draws{{dshard}}.parquet",
            cshard=CHANNEL_SHARDS,
            dshard=DRAW_SHARDS,
        ),
        scores=expand(
            f"{R}/scores/{{{{layer}}}}/shard{{cshard}}/draws{{dshard}}.parquet",
            cshard=CHANNEL_SHARDS,
            dshard=DRAW_SHARDS,
        ),
        topk=f"{R}/topk/{{layer}}.parquet",
    output:
        table=f"{REPORT}/robustness/k_sensitivity_{{layer}}.parquet",
    params:
        config=settings("report.k_values", "report.k_sensitivity_draws", "stats.k_max", "nulls.m", "calibration"),
        code=code("k_sensitivity"),
    log:
        f"{R}/logs/report/k_sensitivity_{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/report/k_sensitivity_{{layer}}.tsv"
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("k_sensitivity")


rule seed_split:
    input:
        scores=expand(
            f"{R}/scores/{{{{layer}}}}/shard{{cshard}}/draws{{dshard}}.parquet",
            cshard=CHANNEL_SHARDS,
            dshard=DRAW_SHARDS,
        ),
    output:
        table=f"{REPORT}/robustness/null_seeds_{{layer}}.parquet",
    params:
        config=settings("calibration"),
        code=code("seed_split"),
    log:
        f"{R}/logs/report/null_seeds_{{layer}}.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("seed_split")


# Text-head sensitivity (paper Fig. 6) needs patch and prompt embeddings from a second embedder.
# They reuse the embedding scripts with the `embedder` section swapped for `secondary_embedder`,
# written under R/secondary/ with the same layout as R/embeddings/ and R/prompts/.
if cfg.secondary_embedder is not None:

    rule embed_patches_secondary:
        input:
            **asset_inputs("embedder", embedder=cfg.secondary_embedder),
            topk=f"{R}/topk/{{layer}}.parquet",
            dataset=f"{R}/dataset.parquet",
            geometry=f"{R}/geometry.json",
        output:
            crops=f"{R}/secondary/crops/{{layer}}/shard{{cshard}}.parquet",
        params:
            config=secondary_settings("shards.channels", kinds=["embedder"]),
            code=code("embed_patches"),
        threads: 2
        resources:
            gpu=GPU,
        log:
            f"{R}/logs/embed_patches_secondary/{{layer}}_shard{{cshard}}.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("embed_patches")

    rule patch_embeddings_secondary:
        input:
            crops=expand(f"{R}/secondary/crops/{{{{layer}}}}/shard{{cshard}}.parquet", cshard=CHANNEL_SHARDS),
            topk=f"{R}/topk/{{layer}}.parquet",
            geometry=f"{R}/geometry.json",
        output:
            embeddings=expand(f"{R}/secondary/embeddings/{{{{layer}}}}/shard{{cshard}}.parquet", cshard=CHANNEL_SHARDS),
        params:
            config=settings("shards.channels"),
            code=code("patch_embeddings"),
        log:
            f"{R}/logs/patch_embeddings_secondary/{{layer}}.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("patch_embeddings")

    rule embed_prompts_secondary:
        input:
            **asset_inputs("embedder", "prompts", embedder=cfg.secondary_embedder),
            dataset=f"{R}/dataset.parquet",
        output:
            prompts=f"{R}/secondary/prompts/text.parquet",
        params:
            config=secondary_settings("prompts", kinds=["embedder", "vocabulary"]),
            code=code("embed_prompts"),
        threads: 2
        resources:
            gpu=GPU,
        log:
            f"{R}/logs/embed_prompts_secondary.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("embed_prompts")

    rule text_head:
        input:
            patches=f"{R}/patches/{{layer}}.parquet",
            prompts=f"{R}/prompts/text.parquet",
            secondary=expand(f"{R}/secondary/embeddings/{{{{layer}}}}/shard{{cshard}}.parquet", cshard=CHANNEL_SHARDS),
            secondary_prompts=f"{R}/secondary/prompts/text.parquet",
        output:
            table=f"{REPORT}/robustness/text_head_{{layer}}.parquet",
        params:
            config=settings("stats"),
            code=code("text_head"),
        log:
            f"{R}/logs/report/text_head_{{layer}}.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("text_head")


if cfg.report.browser:

    extra_outputs += [f"{REPORT}/browser"]

    rule sprites:
        # The browser's image work (decoding, cutting, JPEG encoding): from the top-K table and the crop
        # geometry alone, so it runs beside embedding and scoring; the browser only writes pages and links these.
        input:
            topk=f"{R}/topk/{{layer}}.parquet",
            dataset=f"{R}/dataset.parquet",
            geometry=f"{R}/geometry.json",
        output:
            sprites=directory(f"{R}/sprites/{{layer}}"),
        params:
            config=settings("report.thumb_size"),
            code=code("sprites"),
        # Thumbnails and sprites in this many threads (fewer when --cores is lower). The work is decoding,
        # resizing and JPEG encoding, mostly outside Python's lock (about 12% is not: two threads ran 1.8x one).
        threads: 4
        log:
            f"{R}/logs/report/sprites_{{layer}}.log",
        benchmark:
            f"{R}/benchmarks/report/sprites_{{layer}}.tsv"
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("sprites")

    rule browser:
        input:
            sprites=expand(f"{R}/sprites/{{layer}}", layer=LAYERS),
            psi=expand(f"{R}/psi/{{layer}}.parquet", layer=LAYERS),
            clusters=expand(f"{R}/clusters/{{layer}}.parquet", layer=LAYERS),
            patches=expand(f"{R}/patches/{{layer}}.parquet", layer=LAYERS),
            dataset=f"{R}/dataset.parquet",
            geometry=f"{R}/geometry.json",
            # the insertion protocol's causal polysemanticity, shown on the channel pages
            causal=CAUSAL_TABLE,
            trials=CAUSAL_TRIALS,
        output:
            browser=directory(f"{REPORT}/browser"),
        params:
            config=settings("run_name", "report.thumb_size", "model.layers", "interventions.layer"),
            code=code("browser"),
        # One thread: the pages' HTML holds Python's lock (1,024 pages took 1.9 s in one thread, 2.1 s in two).
        threads: 1
        log:
            f"{R}/logs/report/browser.log",
        benchmark:
            f"{R}/benchmarks/report/browser.tsv"
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("browser")


rule report:
    input:
        psi=expand(f"{R}/psi/{{layer}}.parquet", layer=LAYERS),
        null_psi=expand(f"{R}/null_psi/{{layer}}.parquet", layer=LAYERS),
        clusters=expand(f"{R}/clusters/{{layer}}.parquet", layer=LAYERS),
        patches=expand(f"{R}/patches/{{layer}}.parquet", layer=LAYERS),
        k_sensitivity=expand(f"{REPORT}/robustness/k_sensitivity_{{layer}}.parquet", layer=LAYERS),
        seed_split=expand(f"{REPORT}/robustness/null_seeds_{{layer}}.parquet", layer=LAYERS),
        text_head=(
            expand(f"{REPORT}/robustness/text_head_{{layer}}.parquet", layer=LAYERS)
            if cfg.secondary_embedder is not None
            else []
        ),
        dataset=f"{R}/dataset.parquet",
        geometry=f"{R}/geometry.json",
    # The browser is not an input: it waits for the interventions' causal table, the report does not, and
    # the two run side by side (the `all` target asks for both).
    output:
        auroc=report(f"{REPORT}/auroc.csv", caption=caption("auroc"), category="1. Real vs null"),
        fig_hist=report(f"{REPORT}/psi_hist.png", caption=caption("psi_hist"), category="1. Real vs null"),
        fig_roc=report(f"{REPORT}/roc.png", caption=caption("roc"), category="1. Real vs null"),
        null_diagnostics=report(
            f"{REPORT}/null_diagnostics.csv", caption=caption("null_diagnostics"), category="1. Real vs null"
        ),
        ks=report(f"{REPORT}/ks.csv", caption=caption("ks"), category="2. Depth"),
        fig_violin=report(f"{REPORT}/depth_violin.png", caption=caption("depth_violin"), category="2. Depth"),
        gallery=report(f"{REPORT}/gallery.csv", caption=caption("gallery_table"), category="3. Galleries"),
        gallery_high=report(
            expand(f"{REPORT}/gallery/high_{{layer}}.png", layer=LAYERS),
            caption=caption("gallery"),
            category="3. Galleries",
        ),
        gallery_low=report(
            expand(f"{REPORT}/gallery/low_{{layer}}.png", layer=LAYERS),
            caption=caption("gallery"),
            category="3. Galleries",
        ),
        robustness=report(f"{REPORT}/robustness.csv", caption=caption("robustness"), category="4. Robustness"),
        fig_k=report(f"{REPORT}/k_sensitivity.png", caption=caption("k_sensitivity"), category="4. Robustness"),
        k_hat=report(f"{REPORT}/k_hat.csv", caption=caption("k_hat_table"), category="4. Robustness"),
        fig_khat=report(f"{REPORT}/k_hat.png", caption=caption("k_hat"), category="4. Robustness"),
        fig_text_head=report(f"{REPORT}/text_head.png", caption=caption("text_head"), category="4. Robustness"),
        fig_seeds=report(f"{REPORT}/null_seeds.png", caption=caption("null_seeds"), category="4. Robustness"),
    params:
        config=settings(
            "report", "stats", "nulls", "calibration", "mining", "secondary_embedder", "run_name", "model.layers"
        ),
        code=code("report"),
    log:
        f"{R}/logs/report.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("report")
