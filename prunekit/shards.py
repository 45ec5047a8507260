"""The encoded dataset on disk: safetensors shards written as encoding goes, read lazily.

Layout of an encoded folder (``artifacts/encoded/`` of a run)::

    index.json                 samples, shard size, shapes, dtypes, skipped samples; one entry per shard
    shard_00000.safetensors    rows of dataset indices [0, S): latents, text, z, source_index
    shard_00001.safetensors    ...

Writing (:func:`encode_to_shards`): shard ``k`` holds the samples of dataset rows ``[k*S, (k+1)*S)``
that could be read; ranks take shards ``k ≡ rank (mod world)``. A shard file appears only complete
(written to a temporary name, then renamed), so a killed encode resumes at the first shard that is
not on disk. Unreadable samples are skipped and counted by reason in the shard's metadata.

Reading (:class:`EncodedShards`): the index and the prompts are read at open; tensor rows are read
from memory-mapped shard files on demand, so the memory a training process needs does not grow with
the number of samples.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

INDEX_FILE = "index.json"
SHARD_PATTERN = "shard_{:05d}.safetensors"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class SkippedSample(Exception):
    """A dataset row that cannot be used (unreadable or missing image, empty caption)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def load_sample(dataset: Any, index: int) -> dict[str, Any]:
    """``dataset[index]`` or :class:`SkippedSample` naming why it cannot be used."""
    from prunekit.errors import MissingPathError

    try:
        item = dataset[index]
    except SkippedSample:
        raise
    except (FileNotFoundError, MissingPathError) as exc:
        raise SkippedSample("missing_file", str(exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated files
        raise SkippedSample("unreadable_image", f"{type(exc).__name__}: {exc}") from None
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        where = getattr(dataset, "where", None)  # a dataset may name a row's file and line
        raise SkippedSample("empty_caption", f"{where(index) if callable(where) else f'row {index}'}: empty caption")
    return item


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from prunekit.run import atomic_target

    with atomic_target(path) as tmp:  # removed again when the write fails (a full disk)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def encode_to_shards(
    folder: str | Path,
    dataset: Any,
    encode_batch: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    *,
    shard_size: int = 1024,
    batch_size: int = 32,
    dtype: str = "float16",
    keep_float32: Sequence[str] = ("z",),
    progress: Callable[[int], None] | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Encode ``dataset`` into shards under ``folder`` (collective under a launcher); returns the index.

    ``encode_batch(items)`` maps a list of dataset items to tensors with one row per item (e.g.
    ``latents``, ``text``, ``z``). Floating tensors are stored in ``dtype`` except ``keep_float32``.
    Shards already on disk are kept (resume).
    """
    from prunekit import distributed

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    total = len(dataset)
    n_shards = max(1, -(-total // shard_size))
    rank, world = distributed.rank(), distributed.world_size()
    store = STORAGE_DTYPES[dtype]
    for k in range(rank, n_shards, world):
        path = folder / SHARD_PATTERN.format(k)
        start, stop = k * shard_size, min((k + 1) * shard_size, total)
        if path.is_file():
            if progress is not None:
                progress((stop - start) * world)
            continue
        buffer = _ShardBuffer(encode_batch, store, keep_float32)
        skipped: list[dict[str, Any]] = []
        for index in range(start, stop):
            try:
                buffer.add(index, load_sample(dataset, index))
            except SkippedSample as exc:
                skipped.append({"index": index, "reason": exc.reason, "detail": exc.detail[:300]})
                if log is not None and len(skipped) <= 3:
                    log.warning("skipped sample %d (%s): %s", index, exc.reason, exc.detail)
            if len(buffer.pending) >= batch_size:
                buffer.flush()
            if progress is not None and (index - start + 1) % batch_size == 0:
                progress(batch_size * world)
        buffer.flush()
        if progress is not None and (stop - start) % batch_size:
            progress(((stop - start) % batch_size) * world)
        columns, prompts, sources = buffer.columns, buffer.prompts, buffer.sources
        tensors = {name: torch.cat(parts) for name, parts in columns.items()}
        tensors["source_index"] = torch.tensor(sources, dtype=torch.int64)
        _atomic_save(tensors, path, {"prompts": json.dumps(prompts), "skipped": json.dumps(skipped),
                                     "rows": json.dumps([start, stop])})
    distributed.barrier()
    return distributed.run_on_main(lambda: write_index(folder, n_shards, shard_size, total, dtype))


class _ShardBuffer:
    """The rows of the shard being encoded: items wait in ``pending`` until a batch is full."""

    def __init__(self, encode_batch: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
                 store: torch.dtype, keep_float32: Sequence[str]) -> None:
        self.encode_batch, self.store, self.keep_float32 = encode_batch, store, set(keep_float32)
        self.columns: dict[str, list[torch.Tensor]] = {}
        self.prompts: list[str] = []
        self.sources: list[int] = []
        self.pending: list[tuple[int, dict[str, Any]]] = []

    def add(self, index: int, item: dict[str, Any]) -> None:
        self.pending.append((index, item))

    def flush(self) -> None:
        if not self.pending:
            return
        out = self.encode_batch([item for _, item in self.pending])
        for name, value in out.items():
            keep = name in self.keep_float32 or not value.is_floating_point()
            self.columns.setdefault(name, []).append(value.detach().cpu().to(value.dtype if keep else self.store))
        self.prompts.extend(str(item["prompt"]) for _, item in self.pending)
        self.sources.extend(i for i, _ in self.pending)
        self.pending.clear()


def write_index(folder: Path, n_shards: int, shard_size: int, total: int, dtype: str) -> dict[str, Any]:
    """Read every shard's header (not its tensors) and write ``index.json``."""
    from safetensors import safe_open

    shards: list[dict[str, Any]] = []
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    skipped: Counter[str] = Counter()
    first_skipped: list[dict[str, Any]] = []
    for k in range(n_shards):
        path = folder / SHARD_PATTERN.format(k)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            rows = f.get_slice("source_index").get_shape()[0]
            for name in f.keys():
                piece = f.get_slice(name)
                shapes.setdefault(name, list(piece.get_shape()[1:]))
                dtypes.setdefault(name, str(piece.get_dtype()))
        lost = json.loads(meta.get("skipped", "[]"))
        skipped.update(s["reason"] for s in lost)
        first_skipped.extend(lost[: max(0, 5 - len(first_skipped))])
        shards.append({"file": path.name, "rows": rows, "source_rows": json.loads(meta["rows"])})
    index = {"version": 1, "samples": sum(s["rows"] for s in shards), "dataset_rows": total,
             "shard_size": shard_size, "storage_dtype": dtype, "shapes": shapes, "dtypes": dtypes,
             "skipped": dict(skipped), "skipped_examples": first_skipped, "shards": shards}
    tmp = folder / f".{INDEX_FILE}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, folder / INDEX_FILE)
    return index


_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


class ShardFile:
    """Rows of the tensors in one safetensors file, read with ``pread`` at their offsets.

    Not memory-mapped on purpose: pages of a mapping a process has touched count in its resident
    memory for as long as the mapping lives, so months of random row reads over a CC3M-size folder
    would grow it without bound; ``pread`` leaves caching to the kernel's page cache.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            (length,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            header = json.loads(os.pread(self.fd, length, 8))
        except Exception:
            os.close(self.fd)
            raise
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        self.base = 8 + length
        self.tensors = {name: (_DTYPES[info["dtype"]], tuple(info["shape"]), tuple(info["data_offsets"]))
                        for name, info in header.items()}

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        dtype, shape, (begin, _) = self.tensors[name]
        row = dtype.itemsize * (int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
        data = os.pread(self.fd, row * (stop - start), self.base + begin + row * start)
        return torch.frombuffer(bytearray(data), dtype=dtype).reshape(stop - start, *shape[1:])

    def length(self, name: str) -> int:
        return self.tensors[name][1][0]

    def close(self) -> None:
        os.close(self.fd)


class EncodedShards:
    """Random access to the rows of an encoded folder; tensors stay on disk until asked for.

    ``rows(indices)`` returns ``{column: tensor}`` for those rows (in that order), floating columns in
    ``float32``; ``prompts`` holds every row's caption; ``column_chunks(name)`` streams one column.
    """

    def __init__(self, folder: str | Path, *, max_open: int = 64) -> None:
        folder = Path(folder)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            from prunekit.errors import MissingPathError

            raise MissingPathError(f"{folder} holds no {INDEX_FILE}: the encode stage did not complete")
        self.folder = folder
        self.index = json.loads(index_path.read_text())
        self.shapes: dict[str, list[int]] = self.index["shapes"]
        counts = [s["rows"] for s in self.index["shards"]]
        self._starts = torch.tensor([0, *counts]).cumsum(0)
        self._files = [folder / s["file"] for s in self.index["shards"]]
        self._open: OrderedDict[int, ShardFile] = OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()  # a prefetch thread reads beside the training loop
        self.prompts: list[str] = []
        for k in range(len(self._files)):
            self.prompts.extend(json.loads(self._handle(k).metadata["prompts"]))

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def columns(self) -> list[str]:
        return list(self.shapes)

    def _handle(self, shard: int) -> ShardFile:
        handle = self._open.get(shard)
        if handle is None:
            handle = ShardFile(self._files[shard])
            self._open[shard] = handle
            while len(self._open) > self._max_open:  # bounded open files for CC3M-size folders
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(shard)
        return handle

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} encoded samples")
        shard = int(torch.searchsorted(self._starts, torch.tensor(index), right=True)) - 1
        return shard, index - int(self._starts[shard])

    def rows(self, indices: Sequence[int], columns: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        names = list(columns or [c for c in self.columns if c != "source_index"])
        out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for index in indices:
            shard, row = self.locate(int(index))
            with self._lock:
                handle = self._handle(shard)
            for name in names:
                out[name].append(handle.rows(name, row, row + 1))
        return {name: _as_compute(torch.cat(parts)) for name, parts in out.items()}

    def column_chunks(self, name: str) -> Iterator[torch.Tensor]:
        """One column, shard by shard (float columns as float32)."""
        for k in range(len(self._files)):
            if self.index["shards"][k]["rows"] == 0:  # every sample of it was skipped: no columns
                continue
            handle = self._handle(k)
            yield _as_compute(handle.rows(name, 0, handle.length(name)))

    def column(self, name: str) -> torch.Tensor:
        """A whole (small) column, e.g. the prompt embeddings ``z`` or ``source_index``."""
        return torch.cat(list(self.column_chunks(name)))

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class RowPrefetcher:
    """Reads the rows of the next micro-batch in a background thread while the current one trains.

    ``indices_of(index)`` gives the dataset rows of micro-batch ``index`` (deterministic, no RNG), so
    what is prefetched is exactly what :meth:`rows` is asked for next; a miss reads synchronously.
    """

    def __init__(self, encoded: EncodedShards, columns: Sequence[str], indices_of: Callable[[int], Sequence[int]]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.encoded, self.columns, self.indices_of = encoded, list(columns), indices_of
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunekit-prefetch")
        self._pending: dict[int, Any] = {}
        self.hits = self.misses = 0

    def prefetch(self, index: int) -> None:
        if index not in self._pending:
            self._pending[index] = self._pool.submit(self.encoded.rows, list(self.indices_of(index)), self.columns)

    def rows(self, index: int) -> dict[str, torch.Tensor]:
        future = self._pending.pop(index, None)
        for stale in [k for k in self._pending if k < index]:  # e.g. after a resume jumped ahead
            self._pending.pop(stale).cancel()
        if future is not None:
            self.hits += 1
            return future.result()
        self.misses += 1
        return self.encoded.rows(list(self.indices_of(index)), self.columns)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _as_compute(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t
