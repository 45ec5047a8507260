"""Bad data: every dataset plugin skips what it cannot use and counts it by reason, the first few are
named in run.log, the counts reach metrics.json, a run stops with one line beyond the allowed share,
and ``prunekit validate`` reports a data path that does not exist or holds no readable sample."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import REPO
from PIL import Image

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.registry import get_registry
from prunekit.shards import SkippedSample, encode_to_shards, load_sample

SMOKE = str(REPO / "recipes" / "tiny" / "aptp_smoke.yaml")
BAD_IMAGES = {"unreadable_image": 3, "missing_file": 1, "empty_caption": 1}  # what loading finds
BAD_LINES = {"bad_metadata": 2}  # what indexing metadata.jsonl finds
GOOD = 8


def jpeg(color: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bad_folder(tmp_path: Path, good: int = GOOD) -> Path:
    """An imagefolder with ``good`` good samples and one of each bad kind:

    line  good+1  a truncated JPEG          line good+4  a file that is not there
    line  good+2  a zero-byte .png          line good+5  not UTF-8 (rejected while indexing)
    line  good+3  a text file named .png    line good+6  an empty caption (a good image)
                                            line good+7  a caption that is null (rejected)
    """
    root = tmp_path / "folder"
    root.mkdir()
    lines = []
    for i in range(good):
        (root / f"good{i}.jpg").write_bytes(jpeg((20 * i, 120, 40)))
        lines.append(json.dumps({"file_name": f"good{i}.jpg", "text": f"a green square number {i}"}).encode())
    data = jpeg((200, 10, 10))
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("this is a text file, not a PNG\n")
    for name in ("truncated.jpg", "zero.png", "text.png", "gone.png"):
        lines.append(json.dumps({"file_name": name, "text": f"the {name} sample"}).encode())
    lines.append(b'{"file_name": "good0.jpg", "text": "caf\xe9 in latin-1"}')
    lines.append(json.dumps({"file_name": "good1.jpg", "text": "  \t "}).encode())
    lines.append(json.dumps({"file_name": "good2.jpg", "text": None}).encode())
    (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root


def validate(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["validate", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def stub_encoder(seen: list[str]):
    def encode(items):
        seen.extend(item["prompt"] for item in items)
        return {"latents": torch.stack([item["image"] for item in items])}

    return encode


# -- prunekit validate -----------------------------------------------------------------------------


def test_validate_reports_a_missing_root_and_a_folder_without_a_readable_sample(tmp_path, capsys):
    imagefolder = ["dataset.name=imagefolder", "dataset.resolution=32"]
    code, err = validate(capsys, SMOKE, *imagefolder, f"dataset.root={tmp_path / 'nowhere'}")
    assert code == 2 and err == [f"error: dataset folder {tmp_path / 'nowhere'} does not exist (set dataset.root=DIR)"]

    (tmp_path / "empty").mkdir()
    code, err = validate(capsys, SMOKE, *imagefolder, f"dataset.root={tmp_path / 'empty'}")
    assert code == 2 and err == [f"error: dataset folder {tmp_path / 'empty'} has no metadata.jsonl (set dataset.root=DIR)"]

    # Every bad kind and no good sample: one line with the counts and the first bad file and line.
    root = bad_folder(tmp_path, good=0)
    code, err = validate(capsys, SMOKE, *imagefolder, f"dataset.root={root}")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: dataset folder {root} holds no readable sample (bad_metadata 2, "
                             "empty_caption 1, missing_file 1, unreadable_image 3); first: ")
    assert f"{root / 'metadata.jsonl'}:1 (truncated.jpg)" in err[0]

    # The eval split is checked as well, its keys named as they are set.
    code, err = validate(capsys, SMOKE, *imagefolder, f"dataset.root={root}", "--no-data")
    assert code == 0 and err[-1].endswith("valid (method 'aptp')")
    eval_split = f"eval.dataset={{name: imagefolder, root: {tmp_path / 'nowhere'}}}"
    code, err = validate(capsys, SMOKE, eval_split)
    assert code == 2 and err == [
        f"error: dataset folder {tmp_path / 'nowhere'} does not exist (set eval.dataset.root=DIR)"]


def test_validate_passes_a_mostly_good_folder_without_importing_torch(tmp_path):
    root = bad_folder(tmp_path)
    code = ("import sys; from prunekit.cli import main;"
            f"rc = main(['validate', {SMOKE!r}, 'dataset.name=imagefolder', 'dataset.root={root}']);"
            "print('RC', rc, 'HEAVY', [m for m in ('torch', 'diffusers') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert "RC 0 HEAVY []" in result.stdout, result.stdout + result.stderr
    assert "valid (method 'aptp')" in result.stderr


def test_validate_opens_a_bounded_number_of_images(tmp_path, capsys, monkeypatch):
    """A folder whose first 40 images are damaged: the probe stops after 32, well before the good one."""
    from prunekit_plugins.datasets import _images

    root = tmp_path / "folder"
    root.mkdir()
    lines = [json.dumps({"file_name": f"{i}.png", "text": f"caption {i}"}) for i in range(41)]
    for i in range(40):
        (root / f"{i}.png").write_bytes(b"")
    (root / "40.png").write_bytes(jpeg((1, 2, 3)))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    opened: list[object] = []
    real = _images.image_problem
    monkeypatch.setattr(_images, "image_problem", lambda source: opened.append(source) or real(source))
    code, err = validate(capsys, SMOKE, "dataset.name=imagefolder", f"dataset.root={root}")
    assert code == 2 and len(opened) == _images.PROBE_LIMIT == 32
    assert err == [f"error: dataset folder {root}: none of the first 32 samples is readable (unreadable_image 32); "
                   f"first: {root / 'metadata.jsonl'}:1 (0.png): UnidentifiedImageError: cannot identify image file "
                   f"'{root / '0.png'}'"]


# -- skipped and counted ---------------------------------------------------------------------------


def test_imagefolder_encode_skips_each_bad_kind_by_reason(tmp_path):
    root = bad_folder(tmp_path)
    dataset = get_registry().build("dataset", {"name": "imagefolder", "root": str(root), "resolution": 16})
    assert len(dataset) == GOOD + 5 and dataset.rejected == BAD_LINES
    meta = root / "metadata.jsonl"
    assert dataset.rejected_examples == [f"{meta}:{GOOD + 5}: not UTF-8",
                                         f"{meta}:{GOOD + 7}: 'file_name' and 'text' must be strings"]
    seen: list[str] = []
    index = encode_to_shards(tmp_path / "enc", dataset, stub_encoder(seen), shard_size=4, batch_size=3)
    assert index["skipped"] == BAD_IMAGES and index["samples"] == GOOD
    assert seen == [f"a green square number {i}" for i in range(GOOD)]  # nothing bad reached the encoder
    by_reason = {}
    for entry in index["skipped_examples"]:
        by_reason.setdefault(entry["reason"], []).append(entry["detail"])
    # each skip names the file and its metadata.jsonl line
    assert [f"truncated.jpg ({meta}:{GOOD + 1})" in d for d in by_reason["unreadable_image"]] == [True, False, False]
    assert f"zero.png ({meta}:{GOOD + 2})" in by_reason["unreadable_image"][1]
    assert f"text.png ({meta}:{GOOD + 3})" in by_reason["unreadable_image"][2]
    assert by_reason["missing_file"] == [f"image {root / 'gone.png'} listed at {meta}:{GOOD + 4} not found"]
    assert by_reason["empty_caption"] == [f"{meta}:{GOOD + 6}: empty caption"]


def _run_args(root: Path) -> list[str]:
    return ["dataset.name=imagefolder", f"dataset.root={root}", "dataset.resolution=32", "method.prune.warmup_iters=1",
            "method.prune.iters=1", "method.finetune.iters=0", "eval.samples_per_expert=0"]


def test_run_counts_in_metrics_names_the_first_few_in_the_log_and_stops_beyond_the_share(tmp_path, capsys):
    root = bad_folder(tmp_path)
    meta = root / "metadata.jsonl"
    out = tmp_path / "ok"
    assert main(["run", SMOKE, "--output", str(out), "-q", *_run_args(root), "method.encode.max_skipped_fraction=0.5"]) == 0
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["skipped"] == {**BAD_IMAGES, **BAD_LINES}
    assert data["samples"] == GOOD and data["dataset_rows"] == GOOD + 7
    assert data["skipped_examples"][0] == f"{meta}:{GOOD + 5}: not UTF-8"
    log = (out / "run.log").read_text()
    assert (f"encode: skipped 7 of {GOOD + 7} samples (bad_metadata 2, empty_caption 1, missing_file 1, "
            f"unreadable_image 3); first: {meta}:{GOOD + 5}: not UTF-8; {meta}:{GOOD + 7}:") in log
    for name in ("truncated.jpg", "zero.png", "text.png"):  # each skipped image named as it is skipped
        assert f"cannot decode image {root / name} ({meta}:" in log
    capsys.readouterr()

    # The default share (1%): the run stops after encoding, one line naming the counts, no traceback.
    assert main(["run", SMOKE, "--output", str(tmp_path / "strict"), "-q", *_run_args(root)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err  # (the rest of stderr is progress bars)
    assert [line for line in err.splitlines() if line.startswith("error")] == [f"error: encode: 7 of {GOOD + 7} samples could not be used (bad_metadata 2, empty_caption 1, "
                   "missing_file 1, unreadable_image 3), more than method.encode.max_skipped_fraction=0.01; "
                   f"first: {meta}:{GOOD + 5}: not UTF-8"]
    assert json.loads((tmp_path / "strict" / "run.json").read_text())["status"] == "failed"


def test_evaluation_reference_images_skip_bad_rows_count_them_and_stop_beyond_the_share(tmp_path, caplog):
    from prunekit.evaluation import evaluate_pipeline, merge_evaluation

    root = bad_folder(tmp_path)
    registry = get_registry()
    recipe = {"metrics": {"macs": {}}, "method": {"name": "dense_finetune"}, "eval": {
        "prompts": 0, "steps": 2, "teacher": False, "max_skipped_fraction": 0.5,
        "dataset": {"name": "imagefolder", "root": str(root), "resolution": 16}}}
    pipeline = registry.build("model", {"name": "tiny_random"})
    with caplog.at_level(logging.WARNING, logger="prunekit"):
        result = evaluate_pipeline(pipeline, recipe, registry)
    # every drawn row was tried; only the good ones became prompts and reference images
    assert result["prompts"] == GOOD and result["model"]["generation"]["images"] == GOOD
    assert result["data"]["rows"] == GOOD + 5 and result["data"]["samples"] == GOOD
    assert result["data"]["skipped"] == BAD_IMAGES and result["data"]["rejected"] == BAD_LINES
    assert "truncated.jpg" in result["data"]["skipped_examples"][0]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "evaluate: skipped 5 of 13 samples (empty_caption 1, missing_file 1, unreadable_image 3)" in warnings
    assert "truncated.jpg" in warnings and "not UTF-8" in warnings
    metrics = merge_evaluation({}, result)  # what metrics.json holds
    assert metrics["evaluation"]["data"]["skipped"] == BAD_IMAGES

    recipe["eval"]["max_skipped_fraction"] = 0.01
    with pytest.raises(PrunekitError) as err:
        evaluate_pipeline(pipeline, recipe, registry)
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        "evaluate: 5 of 13 samples could not be used (empty_caption 1, missing_file 1, unreadable_image 3), "
        "more than eval.max_skipped_fraction=0.01; first: ImageDecodeError: cannot decode image")


# -- the other plugins -----------------------------------------------------------------------------


def test_coco_format_bad_samples_validate_and_annotation_problems(tmp_path, capsys):
    from prunekit_plugins.datasets.synthetic_coco import write_synthetic_coco

    data = write_synthetic_coco(tmp_path / "coco", images=10, captions_per_image=2, resolution=32, bad=True)
    coco = ["dataset.name=coco", f"dataset.root={data['root']}", f"dataset.annotations={data['annotations']}"]
    code, err = validate(capsys, SMOKE, *coco)
    assert code == 0, err
    code, err = validate(capsys, SMOKE, "dataset.name=coco", f"dataset.root={tmp_path / 'no_images'}",
                         f"dataset.annotations={tmp_path / 'no.json'}")
    assert code == 2 and err == [f"error: COCO annotations {tmp_path / 'no.json'} not found (set dataset.annotations=PATH)",
                                 f"error: COCO image folder {tmp_path / 'no_images'} not found (set dataset.root=DIR)"]

    # An annotation without a caption, or whose caption is null, is skipped and counted, not fatal;
    # an empty caption is named by its image when loading skips it.
    ann = Path(data["annotations"])
    captions = json.loads(ann.read_text())
    captions["annotations"][0].pop("caption")
    captions["annotations"][2]["caption"] = None
    ann.write_text(json.dumps(captions))
    dataset = get_registry().build("dataset", {"name": "coco", "root": data["root"], "annotations": str(ann),
                                               "resolution": 16})
    assert len(dataset) == 18 and dataset.rejected == {"bad_metadata": 2}
    assert dataset.rejected_examples[0].startswith(f"{ann}: annotations[0] is malformed (KeyError('caption'))")
    index = encode_to_shards(tmp_path / "enc", dataset, stub_encoder([]), shard_size=8, batch_size=4)
    # annotations[2] (now rejected) was one of the truncated image's two captions
    assert index["skipped"] == {"unreadable_image": 5, "missing_file": 2, "empty_caption": 2}
    with pytest.raises(SkippedSample) as skipped:
        load_sample(dataset, dataset.prompts.index(""))
    assert skipped.value.reason == "empty_caption"
    assert skipped.value.detail.startswith(f"{Path(data['root']) / data['bad']['empty_caption']} (image_id ")

    # Every image damaged: validate says so in one line.
    for path in Path(data["root"]).iterdir():
        path.write_bytes(b"")
    code, err = validate(capsys, SMOKE, *coco)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: COCO data {ann} with images in {data['root']} holds no readable sample (")
    assert "(bad_metadata 2, empty_caption 2, missing_file 2, unreadable_image 14)" in err[0]

    # A captions file that is not UTF-8 cannot be skipped line by line: one line naming it.
    ann.write_bytes(b'{"images": [], "annotations": [{"caption": "caf\xe9"}]}')
    code, err = validate(capsys, SMOKE, *coco)
    assert code == 2 and err == [f"error: {ann}: not UTF-8 (byte 47: invalid continuation byte)"]
    with pytest.raises(PrunekitError, match="not UTF-8"):
        get_registry().build("dataset", {"name": "coco", "root": data["root"], "annotations": str(ann)})


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_cc3m_bad_rows_and_caption_files_are_counted_and_validated(tmp_path, capsys):
    good = jpeg((0, 0, 200))
    # TSV: row 1 is not UTF-8, row 3 has no caption column (header names it second); the rows after
    # them keep their data-row index, so they still find their own images.
    images = tmp_path / "images"
    images.mkdir()
    for i in (0, 1, 2, 3, 4):
        (images / f"{i:09d}.jpg").write_bytes(good)
    (images / "000000002.jpg").write_bytes(good[:40])  # truncated
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_bytes(b"url\tcaption\nhttp://a/0\ta blue square\nhttp://a/1\tcaf\xe9\nhttp://a/2\ttruncated\n"
                    b"http://a/3\nhttp://a/4\tanother blue square\n")
    dataset = get_registry().build("dataset", {"name": "cc3m", "root": str(tsv), "image_dir": str(images),
                                               "resolution": 16})
    assert dataset.prompts == ["a blue square", "truncated", "another blue square"] and list(dataset.rows) == [0, 2, 4]
    assert dataset.rejected == {"bad_metadata": 2}
    assert dataset.rejected_examples == [f"{tsv}:3: not UTF-8 (invalid continuation byte)",
                                         f"{tsv}:5: expected a 'caption' column (#2), found 1 field(s)"]
    index = encode_to_shards(tmp_path / "enc_tsv", dataset, stub_encoder([]), shard_size=4, batch_size=2)
    assert index["skipped"] == {"unreadable_image": 1} and index["samples"] == 2
    tsv_args = ["dataset.name=cc3m", f"dataset.root={tsv}", f"dataset.image_dir={images}"]
    assert validate(capsys, SMOKE, *tsv_args)[0] == 0
    code, err = validate(capsys, SMOKE, *tsv_args[:2], f"dataset.image_dir={tmp_path}")  # images not there
    assert code == 2 and len(err) == 1 and "holds no readable sample (bad_metadata 2, missing_file 3)" in err[0]

    # webdataset: a .txt caption that is not UTF-8, a .json one that is not JSON, a .json without a caption.
    shard = _tar(tmp_path / "shards" / "00000.tar", [
        ("a.jpg", good), ("a.txt", b"a blue square"),
        ("b.jpg", good), ("b.txt", b"caf\xe9"),
        ("c.jpg", good), ("c.json", b"{not json"),
        ("d.jpg", good), ("d.json", b'{"url": "http://x"}'),
        ("e.jpg", good),  # no caption at all
    ])
    wds = get_registry().build("dataset", {"name": "cc3m", "format": "webdataset", "root": str(shard.parent),
                                           "resolution": 16})
    assert wds.prompts == ["a blue square"]
    assert wds.rejected == {"bad_metadata": 3, "incomplete_sample": 1}
    assert wds.rejected_examples == [f"{shard}:b.txt: not UTF-8 (unexpected end of data)",
                                     f"{shard}:c.json: not valid JSON (Expecting property name enclosed in double quotes)",
                                     f"{shard}:d.json: no 'caption' string"]
    wds_args = ["dataset.name=cc3m", "dataset.format=webdataset", f"dataset.root={shard.parent}"]
    assert validate(capsys, SMOKE, *wds_args)[0] == 0
    _tar(shard, [("b.jpg", good[:40]), ("b.txt", b"a cut image"), ("c.jpg", good), ("c.json", b"[]")])
    code, err = validate(capsys, SMOKE, *wds_args)
    assert code == 2 and err == [
        f"error: CC3M webdataset shards {shard.parent} holds no readable sample (bad_metadata 1, unreadable_image 1); "
        f"first: {shard}:b.jpg: OSError: Truncated File Read"]


def test_prompt_lists_skip_undecodable_lines_and_empty_prompts(tmp_path, capsys):
    from prunekit_plugins.posttrain.method import PosttrainMethod

    path = tmp_path / "prompts.txt"
    path.write_bytes(b"a red circle\n\xff\xfe broken\n\n   \na blue square\n")
    dataset = get_registry().build("dataset", {"name": "prompts", "file": str(path)})
    assert dataset.prompts == ["a red circle", "a blue square"]
    assert dataset.rejected == {"bad_metadata": 1} and dataset.rejected_examples[0].startswith(f"{path}:2: not UTF-8")
    inline = get_registry().build("dataset", {"name": "prompts", "items": ["a cat", " ", "a dog"]})
    assert inline.prompts == ["a cat", "a dog"] and inline.rejected == {"empty_caption": 1}

    base = [str(REPO / "recipes" / "posttrain" / "tiny_wanda.yaml"), "dataset.items=[]"]
    assert validate(capsys, *base, f"dataset.file={path}")[0] == 0
    path.write_bytes(b"\xff\n \n")
    code, err = validate(capsys, *base, f"dataset.file={path}")
    assert code == 2 and err == [f"error: prompt file {path} holds no usable prompt (bad_metadata 1); "
                                 f"first: {path}:1: not UTF-8 (invalid start byte)"]

    # Calibration takes the first N usable prompts; what it skipped is logged and recorded.
    class Run:
        log = logging.getLogger("prunekit.test")
        saved: dict = {}

        def build(self, kind):
            return inline

        def save_metrics(self, **kw):
            self.saved.update(kw)

    class Rule:
        statistic = "norms"

    method = PosttrainMethod.__new__(PosttrainMethod)
    method.config = type("C", (), {"calibration": type("K", (), {"prompts": 2})()})()
    run = Run()
    inline.prompts = ["a cat", "", "a dog", "a bird"]  # as a captioned-image dataset's prompts can be
    assert method._prompts(run, Rule()) == ["a cat", "a dog"]
    assert run.saved["data"] == {"calibration_prompts": 2, "skipped": {"empty_caption": 2}}


def test_a_child_recipe_that_changes_the_eval_dataset_drops_the_old_ones_options():
    """aptp_cc3m_base extends the COCO recipe: its eval split must not inherit COCO's keys."""
    from prunekit.data import preflight_data
    from prunekit.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "aptp_cc3m_base.yaml")
    assert set(recipe.data["eval"]["dataset"]) == {"name", "format", "root", "resolution"}
    problems = preflight_data(recipe.data, get_registry())
    assert problems == ["CC3M webdataset shards /data/cc3m/shards: no .tar files found (set dataset.root=DIR or GLOB)",
                        "CC3M webdataset shards /data/cc3m/val_shards: no .tar files found "
                        "(set eval.dataset.root=DIR or GLOB)"]
