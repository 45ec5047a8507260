"""The COCO and CC3M dataset plugins, on tiny fixtures built here (a few 40x30 images)."""

from __future__ import annotations

import io
import json
import logging
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import write_tar
from PIL import Image
from prunekit_plugins.datasets._images import ImageDecodeError, MissingImageError
from prunekit_plugins.datasets.cc3m import Cc3mConfig, build_cc3m
from prunekit_plugins.datasets.coco import CocoConfig, build_coco

from prunekit.config import instantiate_schema, validate_options
from prunekit.errors import RecipeError
from prunekit.recipe import load_recipe

RED, GREEN, BLUE, YELLOW, PURPLE = (220, 30, 30), (30, 200, 60), (30, 60, 220), (240, 210, 20), (150, 40, 170)
TOL = 6 / 127.5  # JPEG is lossy; the colours above are far further apart than this


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def save_image(path: Path, color: tuple[int, int, int], fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(color, fmt))
    return path


def assert_color(image: torch.Tensor, color: tuple[int, int, int], resolution: int) -> None:
    assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
    expected = torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1.0
    assert (image - expected).abs().max().item() < TOL, (image.mean(dim=(1, 2)), expected.flatten())


# -- COCO ----------------------------------------------------------------------------------------

# image 7 has three captions; annotation ids are out of order in the file, as they can be, and
# the lowest belongs to the highest image id (so annotation-id and image-id order differ).
COCO_IMAGES = {7: ("COCO_train2014_000000000007.png", RED), 3: ("COCO_train2014_000000000003.png", GREEN),
               12: ("COCO_train2014_000000000012.png", BLUE)}
COCO_ANNOTATIONS = [  # (annotation id, image id, caption as stored)
    (50, 7, "A red wall.\n"),
    (10, 3, "  a green field"),
    (5, 12, "blue sky "),
    (20, 7, "red paint"),
    (30, 7, "a red square"),
]
COCO_ORDER = [(5, 12, "blue sky"), (10, 3, "a green field"), (20, 7, "red paint"), (30, 7, "a red square"),
              (50, 7, "A red wall.")]


def coco_fixture(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "train2014"
    for file_name, color in COCO_IMAGES.values():
        save_image(root / file_name, color)
    ann = tmp_path / "annotations" / "captions_train2014.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({
        "info": {"description": "tiny"},
        "images": [{"id": i, "file_name": f, "width": 40, "height": 30} for i, (f, _) in COCO_IMAGES.items()],
        "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in COCO_ANNOTATIONS],
    }))
    return root, ann


def coco(root: Path, ann: Path, **options) -> object:
    return build_coco(CocoConfig(root=str(root), annotations=str(ann), **options))


def test_coco_one_sample_per_caption_in_annotation_id_order(tmp_path):
    root, ann = coco_fixture(tmp_path)
    ds = coco(root, ann, resolution=16)
    assert len(ds) == 5
    assert ds.prompts == [c for _, _, c in COCO_ORDER]
    for index, (_, image_id, caption) in enumerate(COCO_ORDER):
        item = ds[index]
        assert item["prompt"] == caption
        assert_color(item["image"], COCO_IMAGES[image_id][1], 16)


def test_coco_one_caption_per_image(tmp_path):
    root, ann = coco_fixture(tmp_path)
    ds = coco(root, ann, resolution=8, one_caption_per_image=True)
    assert len(ds) == 3
    captions = {i: {c for _, j, c in COCO_ORDER if j == i} for i in COCO_IMAGES}
    for index, image_id in enumerate(sorted(COCO_IMAGES)):  # image-id order: 3, 7, 12
        assert ds.prompts[index] in captions[image_id]
        assert_color(ds[index]["image"], COCO_IMAGES[image_id][1], 8)
    # the seed picks which of image 7's captions is used, reproducibly
    picked = [coco(root, ann, one_caption_per_image=True, seed=s).prompts[1] for s in range(12)]
    assert set(picked) == captions[7]
    assert coco(root, ann, one_caption_per_image=True, seed=5).prompts == coco(
        root, ann, one_caption_per_image=True, seed=5).prompts


def test_coco_centre_crop_and_limit(tmp_path):
    root, ann = coco_fixture(tmp_path)
    # image 3: 5-pixel red bands at the left and right edges, green in the middle. At resolution 30
    # nothing is resampled and a centre crop keeps exactly the green middle; a left crop or a
    # squash would keep red.
    banded = Image.new("RGB", (40, 30), GREEN)
    banded.paste(Image.new("RGB", (5, 30), RED), (0, 0))
    banded.paste(Image.new("RGB", (5, 30), RED), (35, 0))
    banded.save(root / COCO_IMAGES[3][0])
    ds = coco(root, ann, resolution=30, limit=2)
    assert len(ds) == 2 and ds.prompts == ["blue sky", "a green field"]
    assert_color(ds[1]["image"], GREEN, 30)
    assert_color(coco(root, ann, resolution=12)[0]["image"], BLUE, 12)  # downscaled 30 -> 12


def test_coco_preflight_names_the_override(tmp_path):
    root, ann = coco_fixture(tmp_path)
    assert CocoConfig(root=str(root), annotations=str(ann)).preflight() == []
    missing = CocoConfig(root=str(tmp_path / "val2014"), annotations=str(tmp_path / "x" / "captions_train2014.json"))
    assert missing.preflight() == [
        f"COCO annotations {tmp_path / 'x' / 'captions_train2014.json'} not found (set dataset.annotations=PATH)",
        f"COCO image folder {tmp_path / 'val2014'} not found (set dataset.root=DIR)",
    ]


def test_coco_missing_image_names_the_file(tmp_path):
    root, ann = coco_fixture(tmp_path)
    gone = root / COCO_IMAGES[12][0]
    gone.unlink()
    ds = coco(root, ann, resolution=8)  # not checked up front
    assert ds[1]["prompt"] == "a green field"
    with pytest.raises(MissingImageError) as err:
        ds[0]
    assert str(gone) in str(err.value) and "image_id 12" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_coco_malformed_annotations_name_the_problem(tmp_path):
    root, ann = coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 99, "image_id": 404, "caption": "orphan"})
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotation 99 refers to image_id 404"):
        coco(root, ann)
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO captions file"):
        coco(root, ann)


# -- CC3M: TSV -----------------------------------------------------------------------------------

CC3M_ROWS = [("a red car", RED), ("green leaves on a tree", GREEN), ("the blue sea", BLUE),
             ("yellow taxi", YELLOW), ("purple flowers", PURPLE), ("another red thing", RED)]


def cc3m_tsv_fixture(tmp_path: Path, present: set[int], *, header: str | None = None,
                     pattern: str = "{index:09d}.jpg") -> tuple[Path, Path]:
    lines = [] if header is None else [header]
    for i, (caption, _) in enumerate(CC3M_ROWS):
        url = f"http://example.com/{i}.jpg"
        lines.append(f"{url}\t{caption}" if header else f"{caption}\t{url}")
    tsv = tmp_path / "Train_GCC-training.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    images = tmp_path / "images"
    images.mkdir()
    for i in sorted(present):
        save_image(images / pattern.format(index=i, shard=i // 10_000), CC3M_ROWS[i][1], "JPEG")
    return tsv, images


def test_cc3m_tsv_skips_and_counts_missing_images(tmp_path, caplog):
    tsv, images = cc3m_tsv_fixture(tmp_path, present={0, 2, 3, 5})
    (images / "000000001.json").write_text("{}")  # img2dataset side files are not images
    (images / "000000004.jpg").mkdir()  # nor are folders
    with caplog.at_level(logging.INFO, logger="prunekit"):
        ds = build_cc3m(Cc3mConfig(root=str(tsv), image_dir=str(images), resolution=16))
    assert len(ds) == 4 and ds.skipped == 2
    assert ds.prompts == ["a red car", "the blue sea", "yellow taxi", "another red thing"]
    assert list(ds.rows) == [0, 2, 3, 5]
    assert any("skipped 2 of 6 rows" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    for index, row in enumerate(ds.rows):
        item = ds[index]
        assert item["prompt"] == CC3M_ROWS[row][0]
        assert_color(item["image"], CC3M_ROWS[row][1], 16)
    limited = build_cc3m(Cc3mConfig(root=str(tsv), image_dir=str(images), limit=2))
    assert limited.prompts == ["a red car", "the blue sea"]


def test_cc3m_tsv_header_and_sharded_pattern(tmp_path):
    pattern = "{shard:05d}/{index:09d}.jpg"  # img2dataset's "files" output layout
    tsv, images = cc3m_tsv_fixture(tmp_path, present={1, 4}, header="url\tcaption", pattern=pattern)
    ds = build_cc3m(Cc3mConfig(root=str(tsv), image_dir=str(images), image_pattern=pattern, resolution=8))
    assert ds.prompts == ["green leaves on a tree", "purple flowers"] and ds.skipped == 4
    assert ds.file(ds.rows[0]) == images / "00000" / "000000001.jpg"
    assert_color(ds[1]["image"], PURPLE, 8)


def test_cc3m_tsv_shard_field_follows_the_row_index(tmp_path):
    rows = [f"filler caption {i}\thttp://example.com/{i}.jpg" for i in range(10_002)]
    (tmp_path / "cc3m.tsv").write_text("\n".join(rows) + "\n")
    save_image(tmp_path / "images" / "00000" / "000000001.jpg", RED, "JPEG")
    save_image(tmp_path / "images" / "00001" / "000010001.jpg", BLUE, "JPEG")
    ds = build_cc3m(Cc3mConfig(root=str(tmp_path / "cc3m.tsv"), image_dir=str(tmp_path / "images"),
                               image_pattern="{shard:05d}/{index:09d}.jpg", resolution=8))
    assert list(ds.rows) == [1, 10_001] and ds.prompts == ["filler caption 1", "filler caption 10001"]
    assert ds.skipped == 10_000
    assert_color(ds[1]["image"], BLUE, 8)


def test_cc3m_tsv_errors(tmp_path):
    tsv, images = cc3m_tsv_fixture(tmp_path, present=set())
    with pytest.raises(ValueError, match=r"none of the 6 rows of .*\.tsv has an image under .*\(first expected .*000000000\.jpg"):
        build_cc3m(Cc3mConfig(root=str(tsv), image_dir=str(images)))
    (images / "000000002.jpg").write_bytes(b"<html>404</html>")  # a dead URL's error page
    ds = build_cc3m(Cc3mConfig(root=str(tsv), image_dir=str(images)))
    with pytest.raises(ImageDecodeError, match="000000002.jpg"):
        ds[0]
    (images / "000000002.jpg").unlink()
    with pytest.raises(MissingImageError, match="000000002.jpg"):
        ds[0]


def test_cc3m_config_checks_and_preflight(tmp_path):
    def problems(**options):
        return validate_options(Cc3mConfig, options, "dataset")

    assert problems(root="x.tsv", image_dir="imgs") == []
    assert problems(root="x.tsv") == ["dataset: image_dir: required when format is 'tsv' (the folder of downloaded images)"]
    assert "unknown field(s) {idx}" in problems(root="x.tsv", image_dir="i", image_pattern="{idx:09d}.jpg")[0]
    assert "has no {index} field" in problems(root="x.tsv", image_dir="i", image_pattern="a.jpg")[0]
    assert problems(root="shards", format="webdataset") == []
    assert "did you mean 'webdataset'" in problems(root="s", format="webdatset")[0]

    tsv = tmp_path / "cc3m.tsv"
    config = instantiate_schema(Cc3mConfig, {"root": str(tsv), "image_dir": str(tmp_path / "imgs")})
    assert config.preflight() == [
        f"CC3M TSV {tsv} not found (set dataset.root=FILE)",
        f"CC3M image folder {tmp_path / 'imgs'} not found (set dataset.image_dir=DIR)",
    ]
    tsv.write_text("a\thttp://x\n")
    (tmp_path / "imgs").mkdir()
    assert config.preflight() == []
    wds = Cc3mConfig(root=str(tmp_path / "shards" / "*.tar"), format="webdataset")
    assert wds.preflight() == [
        f"CC3M webdataset shards {tmp_path / 'shards' / '*.tar'}: no .tar files found (set dataset.root=DIR or GLOB)"
    ]
    write_tar(tmp_path / "shards" / "00000.tar", [("k.txt", b"x"), ("k.jpg", image_bytes(RED, "JPEG"))])
    assert wds.preflight() == []


# -- CC3M: webdataset ----------------------------------------------------------------------------


def caption_json(caption: str) -> bytes:
    return json.dumps({"caption": caption, "url": "http://example.com", "status": "success"}).encode()


def webdataset_fixture(tmp_path: Path) -> Path:
    shards = tmp_path / "shards"
    write_tar(shards / "00000.tar", [
        ("000000000.jpg", image_bytes(RED, "JPEG")), ("000000000.txt", b"a red car\n"),
        ("000000001.json", caption_json("green leaves")), ("000000001.png", image_bytes(GREEN)),
        ("000000002.txt", b"caption whose image failed to download"),
        ("000000003.png", image_bytes(BLUE)), ("000000003.txt", b"the blue sea"),
        ("000000003.json", caption_json("ignored: .txt wins")),
    ])
    write_tar(shards / "00001.tar", [
        ("part.1/000010000.jpg", image_bytes(YELLOW, "JPEG")), ("part.1/000010000.json", caption_json(" yellow taxi ")),
        ("000010001.png", image_bytes(PURPLE)), ("000010001.txt", b"purple flowers"),
    ])
    (shards / "README.md").write_text("not a shard")
    return shards


WDS_ORDER = [("a red car", RED), ("green leaves", GREEN), ("the blue sea", BLUE),
             ("yellow taxi", YELLOW), ("purple flowers", PURPLE)]


@pytest.mark.parametrize("spec", ["folder", "glob"])
def test_cc3m_webdataset_index_and_random_access(tmp_path, spec):
    shards = webdataset_fixture(tmp_path)
    path = str(shards) if spec == "folder" else str(shards / "0000*.tar")
    ds = build_cc3m(Cc3mConfig(root=path, format="webdataset", resolution=16))
    assert len(ds) == 5 and ds.skipped == 1
    assert ds.prompts == [c for c, _ in WDS_ORDER]
    for index in [4, 0, 3, 1, 2, 0]:  # out of order, across shards, repeated
        item = ds[index]
        assert item["prompt"] == WDS_ORDER[index][0]
        assert_color(item["image"], WDS_ORDER[index][1], 16)
    assert sorted(ds._handles) == [0, 1]
    limited = build_cc3m(Cc3mConfig(root=path, format="webdataset", limit=2))
    assert limited.prompts == ["a red car", "green leaves"] and limited.shards == ds.shards
    one = build_cc3m(Cc3mConfig(root=str(shards / "00001.tar"), format="webdataset", resolution=8))
    assert one.prompts == ["yellow taxi", "purple flowers"]


def test_cc3m_webdataset_survives_pickling(tmp_path):
    ds = build_cc3m(Cc3mConfig(root=str(webdataset_fixture(tmp_path)), format="webdataset", resolution=8))
    assert_color(ds[3]["image"], YELLOW, 8)  # opens a handle, which cannot be pickled
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {} and clone.prompts == ds.prompts
    for index in [1, 3, 4]:
        assert_color(clone[index]["image"], WDS_ORDER[index][1], 8)
    assert_color(ds[4]["image"], PURPLE, 8)  # the original still reads
    clone.close()
    assert_color(clone[0]["image"], RED, 8)  # reopens after close


def test_cc3m_webdataset_reopens_handles_in_a_forked_worker(tmp_path):
    ds = build_cc3m(Cc3mConfig(root=str(webdataset_fixture(tmp_path)), format="webdataset", resolution=8))
    ds[0]
    parent = ds._handles[0]
    ds._pid = -1  # as a forked DataLoader worker sees it: another process opened the handles
    assert_color(ds[2]["image"], BLUE, 8)
    assert ds._handles[0] is not parent and not parent.closed


def test_cc3m_webdataset_shard_changed_after_indexing(tmp_path):
    shards = webdataset_fixture(tmp_path)
    ds = build_cc3m(Cc3mConfig(root=str(shards), format="webdataset", resolution=8))
    shard = shards / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:600])  # cut inside the first image's data
    with pytest.raises(ValueError, match=r"00001\.tar: part\.1/000010000\.jpg is truncated"):
        ds[3]
    assert_color(ds[0]["image"], RED, 8)  # other shards still read


def test_cc3m_webdataset_rejects_compressed_shards(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w:gz") as tar:
        info = tarfile.TarInfo("k.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        build_cc3m(Cc3mConfig(root=str(shard), format="webdataset"))


# -- recipes -------------------------------------------------------------------------------------

RECIPE = """
name: {name}
method: {{name: dense_finetune}}
model: {{name: tiny_random}}
losses: {{ddpm: {{}}}}
dataset: {dataset}
"""


def write_recipe(tmp_path: Path, name: str, dataset: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(RECIPE.format(name=name, dataset=dataset))
    return path


def test_recipes_validate_and_preflight(tmp_path):
    from prunekit.registry import get_registry
    from prunekit.runner import preflight

    root, ann = coco_fixture(tmp_path)
    recipe = load_recipe(write_recipe(
        tmp_path, "coco", f"{{name: coco, root: {root}, annotations: {ann}, resolution: 64, limit: 1000, "
                          "one_caption_per_image: true}"))
    assert recipe.data["dataset"]["annotations"] == str(ann)
    assert preflight(recipe, get_registry()) == []
    recipe = load_recipe(write_recipe(tmp_path, "coco", "{name: coco, root: /nowhere/train2014, annotations: a.json}"))
    assert preflight(recipe, get_registry()) == [
        "COCO annotations a.json not found (set dataset.annotations=PATH)",
        "COCO image folder /nowhere/train2014 not found (set dataset.root=DIR)",
    ]
    for dataset in ["{name: cc3m, root: /d/cc3m.tsv, image_dir: /d/images, image_pattern: '{shard:05d}/{index:09d}.jpg'}",
                    "{name: cc3m, format: webdataset, root: '/d/cc3m/{00000..00331}.tar', limit: 5}"]:
        assert load_recipe(write_recipe(tmp_path, "cc3m", dataset)).data["dataset"]["name"] == "cc3m"


@pytest.mark.parametrize(("dataset", "message"), [
    ("{name: coco, root: /r, anotations: /a.json}", "dataset.anotations: unknown key (did you mean 'annotations'?)"),
    ("{name: coco, root: /r, annotations: /a.json, one_caption_per_imag: true}",
     "dataset.one_caption_per_imag: unknown key (did you mean 'one_caption_per_image'?)"),
    ("{name: cc3m, root: /d.tsv, image_dir: /i, image_patern: '{index}.jpg'}",
     "dataset.image_patern: unknown key (did you mean 'image_pattern'?)"),
    ("{name: cc3m, root: /d.tsv}", "dataset: image_dir: required when format is 'tsv'"),
    ("{name: coco, root: /r}", "dataset.annotations: required option is missing"),
])
def test_recipes_reject_mistakes(tmp_path, dataset, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, "bad", dataset))
    assert any(message in p for p in err.value.problems), err.value.problems
