"""The encoded dataset on disk: shards written as encoding goes, a killed encode resumed, bad samples
skipped and counted, rows read back lazily."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SMOKE, run_recipe, write_tar

from prunekit.shards import EncodedShards, encode_to_shards


class Rows:
    """A dataset of ``n`` rows whose image encodes its index; ``stop_at`` simulates a kill."""

    def __init__(self, n: int, stop_at: int | None = None) -> None:
        self.n, self.stop_at = n, stop_at
        self.prompts = [f"prompt {i}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if self.stop_at is not None and i == self.stop_at:
            raise KeyboardInterrupt
        return {"prompt": self.prompts[i], "image": torch.full((3, 4, 4), float(i))}


def _encoder(seen: list[int]):
    def encode(items):
        values = torch.stack([it["image"][0, 0, 0] for it in items])
        seen.extend(int(v) for v in values)
        return {"latents": values[:, None, None, None].expand(-1, 4, 2, 2) / 7,
                "text": values[:, None, None].expand(-1, 3, 5) / 3, "z": values[:, None].expand(-1, 6) * 1.0}

    return encode


def test_killed_encode_resumes_at_the_first_missing_shard(tmp_path):
    full_seen: list[int] = []
    full = encode_to_shards(tmp_path / "full", Rows(40), _encoder(full_seen), shard_size=8, batch_size=3)
    assert full["samples"] == 40 and len(full["shards"]) == 5 and sorted(full_seen) == list(range(40))

    with pytest.raises(KeyboardInterrupt):
        encode_to_shards(tmp_path / "killed", Rows(40, stop_at=27), _encoder([]), shard_size=8, batch_size=3)
    done = sorted(p.name for p in (tmp_path / "killed").iterdir())
    assert done == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]

    seen: list[int] = []
    resumed = encode_to_shards(tmp_path / "killed", Rows(40), _encoder(seen), shard_size=8, batch_size=3)
    assert sorted(seen) == list(range(24, 40))  # finished shards were not encoded again
    assert resumed["samples"] == 40
    a, b = EncodedShards(tmp_path / "full"), EncodedShards(tmp_path / "killed")
    assert a.prompts == b.prompts == [f"prompt {i}" for i in range(40)]
    for column in ("latents", "text", "z", "source_index"):
        assert torch.equal(a.column(column), b.column(column))


def test_rows_are_read_lazily_in_any_order_with_storage_dtype(tmp_path):
    encode_to_shards(tmp_path / "enc", Rows(30), _encoder([]), shard_size=7, batch_size=4, dtype="float16")
    enc = EncodedShards(tmp_path / "enc", max_open=2)
    assert len(enc) == 30 and enc.shapes == {"latents": [4, 2, 2], "text": [3, 5], "z": [6], "source_index": []}
    rows = enc.rows([29, 0, 13, 13, 7])
    assert rows["z"].dtype == torch.float32 and rows["z"][:, 0].tolist() == [29, 0, 13, 13, 7]  # z kept fp32
    expected = (torch.tensor([29.0, 0, 13, 13, 7]) / 7).half().float()  # latents stored as fp16
    assert torch.equal(rows["latents"][:, 0, 0, 0], expected)
    assert len(enc._open) <= 2
    with pytest.raises(IndexError):
        enc.rows([30])


def _coco(tmp_path, **kwargs):
    from prunekit_plugins.datasets.synthetic_coco import write_synthetic_coco

    return write_synthetic_coco(tmp_path / "coco", images=12, captions_per_image=2, resolution=32, bad=True, **kwargs)


def test_bad_coco_samples_are_skipped_and_counted(tmp_path):
    from prunekit.registry import get_registry

    data = _coco(tmp_path)
    dataset = get_registry().build("dataset", {"name": "coco", "root": data["root"],
                                               "annotations": data["annotations"], "resolution": 32})
    seen: list[int] = []

    def encode(items):
        seen.extend(range(len(items)))
        return {"latents": torch.stack([it["image"] for it in items])}

    index = encode_to_shards(tmp_path / "enc", dataset, encode, shard_size=5, batch_size=4)
    # 12 images x 2 captions; damaged: truncated + zero-byte + text-as-jpg images, a missing file, an empty caption
    assert index["skipped"] == {"unreadable_image": 6, "missing_file": 2, "empty_caption": 2}
    assert index["samples"] == 24 - 10 == len(seen)
    details = " ".join(e["detail"] for e in index["skipped_examples"])
    assert data["bad"]["truncated"] in details  # the file is named


def test_imagefolder_bad_metadata_lines_and_images_are_counted(tmp_path):
    from PIL import Image

    from prunekit.registry import get_registry

    root = tmp_path / "folder"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / f"{i}.png")
    (root / "3.png").write_text("not a png")
    lines = [json.dumps({"file_name": f"{i}.png", "text": f"red {i}"}).encode() for i in range(4)]
    lines += [b'{"file_name": "gone.png", "text": "missing"}', b"\xff\xfe not utf-8", b"{not json",
              json.dumps({"file_name": "0.png"}).encode()]
    (root / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    dataset = get_registry().build("dataset", {"name": "imagefolder", "root": str(root), "resolution": 16})
    assert len(dataset) == 5 and dataset.rejected == {"bad_metadata": 3}
    assert "metadata.jsonl:6: not UTF-8" in dataset.rejected_examples[0]
    index = encode_to_shards(tmp_path / "enc", dataset, lambda items: {"latents": torch.stack([i["image"] for i in items])},
                             shard_size=8, batch_size=2)
    assert index["skipped"] == {"unreadable_image": 1, "missing_file": 1} and index["samples"] == 3

    # Through a run: what the dataset rejected while indexing and what the encode stage skipped, together.
    args = ["dataset.name=imagefolder", f"dataset.root={root}", "dataset.resolution=32", "method.prune.warmup_iters=1",
            "method.prune.iters=1", "method.finetune.iters=0", "eval.samples_per_expert=0",
            "method.encode.max_skipped_fraction=0.9"]
    run_recipe(SMOKE, args, output=tmp_path / "run")
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    assert data["skipped"] == {"bad_metadata": 3, "unreadable_image": 1, "missing_file": 1}
    assert data["samples"] == 3 and data["dataset_rows"] == 8
    assert "metadata.jsonl:6: not UTF-8" in data["skipped_examples"][0]


def test_run_records_skipped_samples_and_stops_beyond_the_allowed_share(tmp_path):
    from prunekit.errors import PrunekitError
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.runner import execute

    data = _coco(tmp_path)
    common = ["dataset.name=coco", f"dataset.root={data['root']}", f"dataset.annotations={data['annotations']}",
              "dataset.resolution=32", "method.prune.warmup_iters=1", "method.prune.iters=2",
              "method.finetune.iters=1", "eval.samples_per_expert=0", "method.encode.shard_size=8"]
    _, metrics = run_recipe(SMOKE, [*common, "method.encode.max_skipped_fraction=0.5"], output=tmp_path / "ok")
    saved = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert saved["data"]["skipped"] == {"unreadable_image": 6, "missing_file": 2, "empty_caption": 2}
    assert saved["data"]["samples"] == 14 and metrics["data"] == saved["data"]
    assert "encode: skipped 10 of 24 samples" in (tmp_path / "ok" / "run.log").read_text()

    with pytest.raises(PrunekitError, match=r"10 of 24 samples could not be used .*max_skipped_fraction=0.01"):
        execute(load_recipe(SMOKE, common), get_registry(), output=tmp_path / "strict", console_log=False)
    info = json.loads((tmp_path / "strict" / "run.json").read_text())
    assert info["status"] == "failed"


def test_engine_prefetches_exactly_the_next_micro_batch_and_trains_the_same(tmp_path):
    from prunekit.engine import micro_batch_indices, train
    from prunekit.engine_config import EngineConfig
    from prunekit.shards import RowPrefetcher

    encode_to_shards(tmp_path / "enc", Rows(40), _encoder([]), shard_size=8, batch_size=4, dtype="float32")
    enc = EncodedShards(tmp_path / "enc")

    def indices_of(index):
        return micro_batch_indices(len(enc), 4, index, seed=0)

    def run(prefetch: bool, ckpt):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 1)
        reader = RowPrefetcher(enc, ["z", "latents"], indices_of)
        asked = []

        def batch_fn(index):
            asked.append(index)
            return reader.rows(index) if prefetch else enc.rows(indices_of(index), ["z", "latents"])

        def loss_fn(module, batch, step):
            return ((module(batch["z"] / 40) - batch["latents"][:, 0, 0, 0:1]) ** 2).mean(), {}

        cfg = EngineConfig(micro_batch=4, grad_accum=2, checkpoint_every=100)
        result = train(model, loss_fn, batch_fn, cfg=cfg, lr=1e-2, steps=5, ckpt_dir=ckpt,
                       prefetch=reader.prefetch if prefetch else None)
        reader.close()
        return result, reader, asked

    plain, _, asked_plain = run(False, tmp_path / "a")
    fetched, reader, asked = run(True, tmp_path / "b")
    assert asked == asked_plain == list(range(10))
    assert reader.hits == 9 and reader.misses == 1  # every micro-batch but the first was read ahead
    for key, value in plain.state_dict.items():
        assert torch.equal(fetched.state_dict[key], value)


def test_bad_cc3m_samples_are_skipped_and_counted(tmp_path):
    """Both CC3M layouts: a truncated image, a zero-byte one, a missing one, an empty caption."""
    import io

    from PIL import Image

    from prunekit.registry import get_registry

    def jpeg(color):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), color).save(buf, format="JPEG")
        return buf.getvalue()

    good = jpeg((200, 0, 0))
    # TSV + image folder (img2dataset "files" layout): row 4's image was never downloaded.
    images = tmp_path / "images"
    images.mkdir()
    rows = [("a red car", good), ("a cut download", good[: len(good) // 3]), ("an empty file", b""),
            ("   ", good), ("never downloaded", None), ("another red car", good)]
    for i, (_, data) in enumerate(rows):
        if data is not None:
            (images / f"{i:09d}.jpg").write_bytes(data)
    (tmp_path / "train.tsv").write_text("".join(f"{c}\thttp://example.com/{i}.jpg\n" for i, (c, _) in enumerate(rows)))
    tsv = get_registry().build("dataset", {"name": "cc3m", "root": str(tmp_path / "train.tsv"),
                                           "image_dir": str(images), "resolution": 16})
    # webdataset: the same samples in a shard; the missing image leaves a caption without an image.
    shard = write_tar(tmp_path / "shards" / "00000.tar", [
        (name, payload) for i, (caption, data) in enumerate(rows)
        for name, payload in ((f"{i:09d}.txt", caption.encode()), (f"{i:09d}.jpg", data)) if payload is not None])
    wds = get_registry().build("dataset", {"name": "cc3m", "format": "webdataset", "root": str(shard.parent),
                                           "resolution": 16})

    def encode(items):
        return {"latents": torch.stack([it["image"] for it in items])}

    for name, dataset, at_index in (("tsv", tsv, {"missing_file": 1}), ("webdataset", wds, {"incomplete_sample": 1})):
        index = encode_to_shards(tmp_path / f"enc_{name}", dataset, encode, shard_size=4, batch_size=2)
        assert index["skipped"] == {"unreadable_image": 2, "empty_caption": 1}, name
        assert index["samples"] == 2 and dataset.rejected == at_index, name  # missing: found while indexing
