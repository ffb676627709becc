# Dataset: render generated images, fetch Tiny-ImageNet when absent, index everything into one table.

if DATASET.render:

    rule render_images:
        output:
            images=directory(f"{R}/world/images"),
            rendered=[f"{R}/world/{name}" for name in DATASET.rendered],
        params:
            config=settings("data.source", kinds=["dataset"]),
            code=code("render_images"),
        log:
            f"{R}/logs/render_images.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("render_images")


if cfg.data.source == "tiny_imagenet":

    rule download_tiny_imagenet:
        output:
            wnids=f"{cfg.data.root}/wnids.txt",
        params:
            config=settings("data.root", "data.url", "data.md5", "data.download"),
            code=code("download_tiny_imagenet"),
        log:
            f"{R}/logs/download_tiny_imagenet.log",
        conda:
            "../envs/polypsi.yaml"
        script:
            script_path("download_tiny_imagenet")


rule index_dataset:
    input:
        **images_source(),
    output:
        dataset=f"{R}/dataset.parquet",
        skipped=f"{R}/skipped.csv",
    params:
        config=settings(
            "data.source", "data.root", "data.split", "data.max_images", "data.max_pixels", "data.max_skipped_share"
        ),
        code=code("index_dataset"),
        files=dataset_files,
    threads: 2
    log:
        f"{R}/logs/index_dataset.log",
    conda:
        "../envs/polypsi.yaml"
    script:
        script_path("index_dataset")
