"""What every figure module shares: atomic PNG/PDF writing, file-name fragments, step labels."""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files: no display is needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..errors import LayerLMCError  # noqa: E402


def save_figure(fig, path: Path, dpi: int) -> Path:
    """``fig`` written to ``path`` through a temporary name, so that a reader never sees half a
    figure; a full disk or a read-only folder is one clear error."""
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise LayerLMCError(f"cannot write figure {path}: {err.strerror or err}") from None
    return path


def save_png(fig, path: Path, dpi: int = 120) -> Path:
    """``fig`` as one PNG file, closed afterwards."""
    try:
        return save_figure(fig, path, dpi)
    finally:
        plt.close(fig)


def save_png_pdf(fig, stem: Path, dpi: int) -> list[Path]:
    """``stem.png`` and ``stem.pdf``, each written to a temporary name and then moved in place."""
    try:
        return [save_figure(fig, stem.with_name(stem.name + suffix), dpi) for suffix in (".png", ".pdf")]
    finally:
        plt.close(fig)


def step_label(step) -> str:
    try:
        number = float(step)
    except (TypeError, ValueError):
        return "–" if step is None else str(step)
    if math.isnan(number):
        return "–"
    return str(int(number)) if number.is_integer() else f"{number:g}"


def step_key(label: str) -> tuple:
    try:
        return (1, float(label))
    except ValueError:
        return (0, 0.0)


def unit_of(frame: pd.DataFrame) -> str:
    if "unit" not in frame:
        return "step"
    units = frame["unit"].dropna()
    return str(units.mode().iloc[0]) if not units.empty else "step"


def file_name(name: str) -> str:
    """A file-name fragment: ``random:0`` → ``random-0``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(name)).strip("-") or "none"


def group_file_name(name: str) -> str:
    """A group name usable in a file name (the subspace figures' names: unlike
    :func:`file_name`, letters of any script and ``-`` are kept, and an empty name is ``group``)."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "group"
