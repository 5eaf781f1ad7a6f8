"""A cache of decoded datasets: the tensors a loader builds from its source files (decompressed,
parsed, converted and normalised), stored once as ``.npy`` files and memory-mapped after.

Decoding Fashion-MNIST's 70k gzipped images takes about half a second on every run; mapping the
decoded tensors takes milliseconds, and their pages are read only when touched. An entry is
keyed by the SHA-256 of its source files and of the decoding settings (normalisation, mean,
std, format version): a changed source file is a new key, never a stale hit. An entry is checked
before use (its files' sizes, shapes and dtypes against its description, and a digest of its
labels and of a sample of its inputs); one that fails is decoded again and rewritten, never
trusted. Entries are written to a temporary name and renamed, so a run killed while writing
leaves no half-written entry.

Where: ``$LAYERLMC_DATA_CACHE`` (a folder; ``off`` disables the cache), else
``<user cache>/layerlmc/decoded`` (``$XDG_CACHE_HOME`` respected). A folder that cannot be
written just means no cache: the data is decoded as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("layerlmc")

#: the entries' layout; a new one makes every old entry a miss
VERSION = 1
ENV = "LAYERLMC_DATA_CACHE"
OFF = ("off", "0", "no", "false", "none")
#: the inputs are checked at this many evenly spaced places (the labels in full)
SAMPLES = 4096


def cache_dir() -> Path | None:
    """The cache folder, or None where ``$LAYERLMC_DATA_CACHE`` turns the cache off."""
    value = os.environ.get(ENV)
    if value is not None and value.strip().lower() in OFF:
        return None
    if value:
        return Path(value)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "layerlmc" / "decoded"


def source_key(files: Sequence[Path], settings: Mapping[str, object]) -> str:
    """SHA-256 of the source files' bytes and of the decoding settings."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, **settings}, sort_keys=True).encode())
    for path in files:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _check(inputs: np.ndarray, labels: np.ndarray) -> str:
    step = max(1, inputs.size // SAMPLES)
    digest = hashlib.sha256(np.ascontiguousarray(inputs.reshape(-1)[::step]).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def cached_tensors(
    name: str, files: Sequence[Path], settings: Mapping[str, object],
    decode: Callable[[], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode()``'s (inputs, labels), from the cache when a valid entry for these source
    ``files`` and ``settings`` is there; otherwise decoded and stored for the next run."""
    folder = cache_dir()
    if folder is None:
        return decode()
    key = source_key(files, settings)
    stem = folder / f"{name}-{key[:24]}"
    found = _read(stem)
    if found is not None:
        return found
    inputs, labels = decode()
    _write(stem, inputs, labels)
    return inputs, labels


def _read(stem: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    meta_path = stem.with_suffix(".json")
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        # copy-on-write: writable tensors that never change the file
        inputs = np.load(stem.with_name(stem.name + ".inputs.npy"), mmap_mode="c")
        labels = np.load(stem.with_name(stem.name + ".labels.npy"), mmap_mode="c")
        if (list(inputs.shape) != meta["inputs_shape"] or str(inputs.dtype) != meta["inputs_dtype"]
                or list(labels.shape) != meta["labels_shape"]
                or str(labels.dtype) != meta["labels_dtype"]
                or _check(inputs, labels) != meta["check"]):
            raise ValueError("its contents do not match its description")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        log.info("decoded-data cache entry %s is unreadable (%s); decoding the source again",
                 stem.name, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def _write(stem: Path, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"inputs": inputs.contiguous().numpy(), "labels": labels.contiguous().numpy()}
        for part, array in arrays.items():
            with tempfile.NamedTemporaryFile(dir=stem.parent, prefix=f".{stem.name}.", suffix=".npy",
                                             delete=False) as handle:
                np.save(handle, array)
            os.replace(handle.name, stem.with_name(f"{stem.name}.{part}.npy"))
        meta = {"inputs_shape": list(arrays["inputs"].shape), "inputs_dtype": str(arrays["inputs"].dtype),
                "labels_shape": list(arrays["labels"].shape), "labels_dtype": str(arrays["labels"].dtype),
                "check": _check(arrays["inputs"], arrays["labels"])}
        # the description last: an entry without it is never read
        tmp = stem.with_name(f".{stem.name}.json.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, stem.with_suffix(".json"))
    except OSError as err:
        log.info("cannot write the decoded-data cache in %s (%s); set %s=off to skip it",
                 stem.parent, err, ENV)
