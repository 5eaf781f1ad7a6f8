"""Run directories: the results contract of docs/design.md §5 (schema in docs/results.md)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import torch
import yaml

from ..errors import LayerLMCError

log = logging.getLogger("layerlmc")

SCHEMA = 2
POINT_FIELDS = (
    "schema", "step", "unit", "kind", "group", "group_index", "base", "order",
    "alpha", "direction", "sigma", "sample", "split", "loss", "accuracy", "n",
)
#: What identifies a point record; a rerun skips every point whose key is already stored.
POINT_KEY = (
    "step", "unit", "kind", "group", "group_index", "base", "order", "alpha", "direction", "sigma",
    "sample", "split",
)
BARRIER_COLUMNS = (
    "step", "unit", "kind", "group", "group_index", "base", "order", "split",
    "metric", "definition", "reference", "value",
)

#: Inputs added to ``run.json`` after folders were written without them, with the value every
#: such folder was computed with: a folder that lacks the key is compared as if it held this
#: (an old folder continues in fp32, and refuses bf16)
INPUT_DEFAULTS = {"precision": "fp32", "loss mean": "example", "alignment": "none"}


def point_key(record: Mapping) -> tuple:
    return tuple(record.get(field) for field in POINT_KEY)


class RunDir:
    """``config.yaml``, ``run.json``, ``points.jsonl`` (append-only), ``barriers.csv``, ``figures/``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise LayerLMCError(f"output path {self.path} exists and is not a folder")
        try:
            self.figures.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LayerLMCError(f"cannot create output folder {self.path}: {_reason(err)}") from None
        if not os.access(self.path, os.W_OK):
            raise LayerLMCError(f"output folder {self.path} is not writable; choose another output folder")

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def points_file(self) -> Path:
        return self.path / "points.jsonl"

    @property
    def barriers_file(self) -> Path:
        return self.path / "barriers.csv"

    # -- run.json and config.yaml ---------------------------------------------------------
    def claim(self, inputs: Mapping[str, object], config: Mapping, device: str) -> None:
        """Start (or resume) a run; refuse a folder holding points computed from other inputs.

        ``inputs`` are the things every stored number depends on (digests of the checkpoints
        and data, the model, the example subset, the grouping); ``config`` is the full set of
        options, written to ``config.yaml`` when the run completes.
        """
        previous = self.read_run()
        old_inputs = (previous or {}).get("inputs") or {}
        if old_inputs and self.points_file.exists():
            old_inputs = {**INPUT_DEFAULTS, **old_inputs}
            changed = [key for key in inputs if key in old_inputs and old_inputs[key] != inputs[key]]
            if changed:
                raise LayerLMCError(
                    f"{self.path} holds results computed with another {', '.join(changed)} "
                    f"(see its config.yaml); choose another --out"
                )
        self.config = dict(config)
        started = previous.get("started") if previous else None
        if not (self.path / "config.yaml").exists():
            self.write_config()
        self.write_run(
            {
                "schema": SCHEMA,
                "status": "running",
                "inputs": dict(inputs),
                "started": started or _now(),
                "resumed": _now() if started else None,
                "ended": None,
                "argv": sys.argv,
                "device": device,
                "versions": _versions(),
                "git_sha": _git_sha(),
            }
        )

    def write_config(self) -> None:
        self._write_text(self.path / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))

    def finish(self, status: str = "complete") -> None:
        if status == "complete" and getattr(self, "config", None) is not None:
            self.write_config()  # the options that produced barriers.csv
        run = self.read_run() or {}
        run.update(status=status, ended=_now())
        self.write_run(run)

    @contextlib.contextmanager
    def status_on_error(self):
        """Mark run.json ``interrupted`` (Ctrl-C, a kill the process sees) or ``failed`` when the
        body raises; records already appended stay, so a rerun continues from them."""
        try:
            yield self
        except KeyboardInterrupt:
            self._mark("interrupted")
            raise
        except BaseException:
            self._mark("failed")
            raise

    def _mark(self, status: str) -> None:
        # the folder may be what failed (disk full, gone read-only): the error that stopped the
        # run is the one to report, and run.json keeps saying "running", never "complete"
        try:
            self.finish(status)
        except LayerLMCError as err:
            log.warning("could not mark the run %s in run.json: %s", status, err)

    def write_file(self, name: str, text: str) -> Path:
        self._write_text(self.path / name, text)
        return self.path / name

    def update_run(self, **fields) -> None:
        run = self.read_run() or {}
        run.update(fields)
        self.write_run(run)

    def read_run(self) -> dict | None:
        path = self.path / "run.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable %s", path)
            return None

    def write_run(self, run: Mapping) -> None:
        self._write_text(self.path / "run.json", json.dumps(run, indent=2) + "\n")

    # -- points.jsonl ---------------------------------------------------------------------
    def read_points(self, repair: bool = True) -> list[dict]:
        """Every complete record.

        A line that is not a complete record (a run killed while writing, a damaged file) is
        skipped with a warning; with ``repair`` such lines are moved to
        ``points.jsonl.corrupt`` so that the file stays valid JSON Lines, and the points they
        held are recomputed.
        """
        if not self.points_file.exists():
            return []
        records, good, bad = _scan_jsonl(self.points_file)
        if bad and repair:
            for number, _ in bad:
                log.warning("%s line %d is not a complete record; it will be recomputed", self.points_file, number)
            corrupt = self.points_file.with_name("points.jsonl.corrupt")
            try:
                with open(corrupt, "ab") as out:
                    out.writelines(line if line.endswith(b"\n") else line + b"\n" for _, line in bad)
            except OSError as err:
                raise LayerLMCError(f"cannot write {corrupt}: {_reason(err)}") from None
            self._write_text(self.points_file, b"".join(good).decode("utf-8"))
        return records

    def append_points(self, records: Iterable[Mapping]) -> None:
        append_jsonl(self.points_file, ({f: r.get(f) for f in POINT_FIELDS} for r in records))

    # -- barriers.csv ---------------------------------------------------------------------
    def write_barriers(self, table: pd.DataFrame) -> Path:
        self._write_text(self.barriers_file, table.to_csv(index=False))
        return self.barriers_file

    def _write_text(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise LayerLMCError(f"cannot write {path}: {_reason(err)}") from None


def read_jsonl(path: Path, required: str | None = "loss") -> tuple[list[dict], list[tuple[int, bytes]]]:
    """The complete records of a JSON Lines file, and the (line number, bytes) of the lines that
    are not one (a torn last line of a killed writer, damaged bytes). A record is a whole line
    holding an object with the field ``required`` (any object when None). Reads only."""
    records, _, bad = _scan_jsonl(path, required)
    return records, bad


def _scan_jsonl(path: Path, required: str | None = "loss") -> tuple[list[dict], list[bytes], list[tuple[int, bytes]]]:
    """Records, the lines that hold them, and the other non-blank lines with their numbers."""
    records, good, bad = [], [], []
    try:
        with open(path, "rb") as handle:
            lines = handle.readlines()
    except OSError as err:
        raise LayerLMCError(f"cannot read {path}: {_reason(err)}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            # damaged bytes may not even be UTF-8, or nest absurdly deep
            record = json.loads(line.decode("utf-8"))
            complete = isinstance(record, dict) and (required is None or required in record)
            if not complete or not line.endswith(b"\n"):
                raise ValueError
        except (ValueError, RecursionError):
            bad.append((number, line))
            continue
        records.append(record)
        good.append(line)
    return records, good, bad


def append_jsonl(path: Path, records: Iterable[Mapping]) -> None:
    """Append whole lines and fsync; a torn last line (a killed writer) is dropped first, so a
    new record never glues onto half of an old one. When the write fails (disk full, a
    read-only folder) the file is cut back to what it held, so it never ends in half a line
    of this call either."""
    data = "".join(json.dumps(dict(r)) + "\n" for r in records).encode("utf-8")
    if not data:
        return
    try:
        # unbuffered: nothing of a failed write lingers in a buffer to be flushed at close
        with open(path, "ab+", buffering=0) as handle:
            size = _drop_torn_tail(handle)
            try:
                view = memoryview(data)
                while view:
                    written = handle.write(view)
                    if not written:  # a file system that neither writes nor says why
                        raise OSError(errno.EIO, "nothing was written")
                    view = view[written:]
                os.fsync(handle.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    handle.truncate(size)
                raise
    except OSError as err:
        raise LayerLMCError(f"cannot write {path}: {_reason(err)}") from None


def _drop_torn_tail(handle) -> int:
    """Cut an unfinished last line off a file open for appending; returns the size kept. Reads
    only the tail, so appending stays cheap however long the file grows."""
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return 0
    handle.seek(end - 1)
    if handle.read(1) == b"\n":
        return end
    keep, stop = 0, end
    while stop > 0:
        start = max(0, stop - (1 << 16))
        handle.seek(start)
        newline = handle.read(stop - start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        stop = start
    handle.truncate(keep)
    return keep


def _reason(err: OSError) -> str:
    """Why a write failed, and what to do about it."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"{reason}; free some space, then rerun the same command to continue"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{reason}; choose another output folder"
    return reason


def short_hash(text: str) -> str:
    """A 16-hex-digit digest, for recording what a run's numbers depend on (e.g. a model's repr)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict:
    import torch

    from .._version import __version__

    return {"layerlmc": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_digest(data: Mapping[str, object]) -> str:
    """A digest of the splits' tensors (a Dataset split by its type and length only)."""
    digest = hashlib.sha256()
    for name in sorted(data):
        split = data[name]
        digest.update(name.encode())
        if isinstance(split, (tuple, list)) and len(split) == 2:
            for part in split:
                tensor = torch.as_tensor(part)
                digest.update(f"{tuple(tensor.shape)}:{tensor.dtype}".encode())
                # the tensor's own bytes (a memoryview), not a copy of them
                digest.update(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
        else:
            digest.update(f"{type(split).__name__}:{len(split) if hasattr(split, '__len__') else ''}".encode())
    return digest.hexdigest()[:16]
