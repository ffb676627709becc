"""The manifest of data.root (index_dataset's param): what changes it and what does not."""

import os

from polypsi.manifest import dataset_files_param, dataset_manifest, layout_of


def _folder(root):
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            (root / cls / f"{i}.png").write_bytes(b"x" * (10 + i))
    return root


def test_imagefolder_manifest_follows_what_the_indexer_reads(tmp_path):
    root = _folder(tmp_path / "data")
    first = dataset_files_param(root, "imagefolder")
    assert first.startswith("6 entries")  # two class folders, four images
    # hidden files and folders, files that are not images, sub-folders of a class: not indexed, not counted
    (root / "cats" / "._0.png").write_bytes(b"fork")
    (root / "cats" / ".DS_Store").write_bytes(b"")
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "0.png").write_bytes(b"x")
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / "deeper").mkdir()
    (root / "dogs" / "deeper" / "9.png").write_bytes(b"x")
    (root / "README.md").write_text("a file beside the classes")
    assert dataset_files_param(root, "imagefolder") == first
    seen = [first]
    # each of these changes it: an image added, replaced (other size; same size, newer time), removed,
    # renamed, and an empty class folder (it shifts the labels of the classes after it)
    (root / "dogs" / "2.PNG").write_bytes(b"y")
    seen.append(dataset_files_param(root, "imagefolder"))
    (root / "cats" / "0.png").write_bytes(b"z" * 99)
    seen.append(dataset_files_param(root, "imagefolder"))
    st = (root / "cats" / "1.png").stat()
    os.utime(root / "cats" / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    seen.append(dataset_files_param(root, "imagefolder"))
    (root / "dogs" / "2.PNG").unlink()
    seen.append(dataset_files_param(root, "imagefolder"))
    (root / "dogs" / "0.png").rename(root / "dogs" / "5.png")
    seen.append(dataset_files_param(root, "imagefolder"))
    (root / "birds").mkdir()
    seen.append(dataset_files_param(root, "imagefolder"))
    assert len(set(seen)) == len(seen), seen


def test_tree_manifest_counts_every_file_but_hidden_ones(tiny_imagenet):
    rows = dataset_manifest(tiny_imagenet, "tree")
    assert ("wnids.txt", (tiny_imagenet / "wnids.txt").stat().st_size,
            (tiny_imagenet / "wnids.txt").stat().st_mtime_ns) in rows
    assert len(rows) == 2 + 6 + 6 + 1  # wnids, words, train images, val images, annotations
    first = dataset_files_param(tiny_imagenet)
    (tiny_imagenet / "val" / "images" / "._img_000.JPEG").write_bytes(b"fork")
    assert dataset_files_param(tiny_imagenet) == first
    with open(tiny_imagenet / "words.txt", "a") as f:  # class names come from it
        f.write("n00000002\tanother\n")
    assert dataset_files_param(tiny_imagenet) != first


def test_missing_root_and_layouts(tmp_path):
    assert dataset_files_param(tmp_path / "absent") == f"{tmp_path / 'absent'}: no such folder"
    assert layout_of("polypsi.data:index_imagefolder_source") == "imagefolder"
    assert layout_of("polypsi.data:index_tiny_imagenet_source") == "tree"
