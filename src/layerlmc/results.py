"""Run directories: the results contract of DESIGN.md §4 (schema in docs/results.md)."""

from __future__ import annotations

import contextlib
import datetime as _dt
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
import yaml

from .errors import LayerLMCError

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
            raise LayerLMCError(f"cannot create output folder {self.path}: {err.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise LayerLMCError(f"output folder {self.path} is not writable")

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
            self.finish("interrupted")
            raise
        except BaseException:
            self.finish("failed")
            raise

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
        records, good, bad = [], [], []
        with open(self.points_file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or "loss" not in record or not line.endswith("\n"):
                        raise ValueError
                except ValueError:
                    bad.append((number, line))
                    continue
                records.append(record)
                good.append(line)
        if bad and repair:
            for number, _ in bad:
                log.warning("%s line %d is not a complete record; it will be recomputed", self.points_file, number)
            with open(self.points_file.with_name("points.jsonl.corrupt"), "a", encoding="utf-8") as out:
                out.writelines(line if line.endswith("\n") else line + "\n" for _, line in bad)
            self._write_text(self.points_file, "".join(good))
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
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)  # readers see the old file or the new one, never half of one
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise LayerLMCError(f"cannot write {path}: {err.strerror}") from None


def append_jsonl(path: Path, records: Iterable[Mapping]) -> None:
    """Append whole lines and fsync; a torn last line (a killed writer) is dropped first, so a
    new record never glues onto half of an old one."""
    lines = "".join(json.dumps(dict(r)) + "\n" for r in records)
    if not lines:
        return
    try:
        if path.exists() and path.stat().st_size:
            with open(path, "rb+") as handle:
                data = handle.read()
                if not data.endswith(b"\n"):
                    handle.truncate(data.rfind(b"\n") + 1)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise LayerLMCError(f"cannot write {path}: {err.strerror}") from None


def short_hash(text: str) -> str:
    """A 16-hex-digit digest, for recording what a run's numbers depend on (e.g. a model's repr)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict:
    import torch

    from . import __version__

    return {"layerlmc": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
