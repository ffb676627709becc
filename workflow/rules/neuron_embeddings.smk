# Neuron embeddings (Foote 2024): each mined top site as the model itself sees it, the input of the
# channel's last linear map there times the channel's weights (polypsi.neuron_embeddings).


rule neuron_embeddings:
    input:
        **asset_inputs("model"),
        topk=f"{R}/topk/{{layer}}.parquet",
        dataset=f"{R}/dataset.parquet",
    output:
        embeddings=f"{R}/neuron_embeddings/{{layer}}.parquet",
    params:
        # model, mining and the model source's sections: what load_model reads (`enabled` only picks the targets;
        # `foote_threshold` is read by calibrate)
        config=settings(
            "model",
            "mining",
            "neuron_embeddings",
            kinds=["model"],
            without=("neuron_embeddings.enabled", "neuron_embeddings.foote_threshold"),
        ),
        code=code("neuron_embeddings"),
    threads: 2
    resources:
        gpu=GPU,
    log:
        f"{R}/logs/neuron_embeddings/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/neuron_embeddings/{{layer}}.tsv"
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("neuron_embeddings")


if cfg.neuron_embeddings.enabled:
    extra_outputs += expand(f"{R}/neuron_embeddings/{{layer}}.parquet", layer=LAYERS)
