# Dataset: render generated images, fetch Tiny-ImageNet when absent, index everything into one table.

if cfg.data.source in ("world", "synthetic"):

    rule render_images:
        output:
            images=directory(f"{R}/world/images"),
            description=f"{R}/world/world.json" if cfg.data.source == "world" else [],
        params:
            **sections("data", "world", only={"data": ["source", "synthetic"]}),
        log:
            f"{R}/logs/render_images.log",
        script:
            f"{SCRIPTS}/render_images.py"


if cfg.data.source == "tiny_imagenet":

    rule download_tiny_imagenet:
        output:
            f"{cfg.data.root}/wnids.txt",
        params:
            **sections("data", only={"data": ["root", "url", "md5", "download"]}),
        log:
            f"{R}/logs/download_tiny_imagenet.log",
        script:
            f"{SCRIPTS}/download_tiny_imagenet.py"


rule index_dataset:
    input:
        images_source(),
    output:
        f"{R}/dataset.parquet",
    params:
        **sections("data", only={"data": ["source", "root", "split", "max_images"]}),
        world_dir=f"{R}/world",
    log:
        f"{R}/logs/index_dataset.log",
    script:
        f"{SCRIPTS}/index_dataset.py"
