"""Character-level text data for small GPT-like language models (the paper's §2.4 setting).

The built-in corpus is the Jargon File from Debian's ``jargon-text`` package
(``/usr/share/doc/jargon-text/jargon.txt.gz``, about 1.6 M characters); any local UTF-8 text
file, plain or ``.gz``, works the same way.

* The **vocabulary** is a pure function of the text: its sorted set of characters
  (:class:`CharVocab`), so the same file always gives the same ids and a run's vocabulary can be
  rebuilt from the file alone. Recipes also save it as ``vocab.json`` next to the checkpoints.
* The text is split by position: the first ``1 - test_fraction`` of the characters are the
  train part, the rest the test part, so no test window shares a character with the train text.
* An **example** is a window of ``seq_len`` tokens; its labels are the same window shifted by one
  (next-token targets). Window starts are a fixed, seeded sample (:func:`token_windows`), so
  evaluation always sees the same windows and loss/accuracy are per token.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import LayerLMCError
from ..registry import Splits, datasets

#: Debian's jargon-text package (installed by scripts/install.sh)
JARGON_PATH = Path("/usr/share/doc/jargon-text/jargon.txt.gz")


def load_text(path: str | Path) -> str:
    """The whole file as a string (UTF-8; ``.gz`` files are decompressed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (install Debian's jargon-text package)" if path == JARGON_PATH else ""
        raise LayerLMCError(f"text file not found: {path}{hint}")
    stat = path.stat()
    return _load_text_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_text_cached(path: str, mtime_ns: int, size: int) -> str:
    # mtime and size are part of the key so an edited file is read again
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return Path(path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise LayerLMCError(f"cannot read text file {path}: {type(err).__name__}: {err}") from None


class CharVocab:
    """A character vocabulary: id ``i`` is the ``i``-th character of ``chars`` (sorted, unique)."""

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if any(len(c) != 1 for c in chars):
            raise LayerLMCError("a character vocabulary holds single characters only")
        if len(set(chars)) != len(chars):
            raise LayerLMCError("a character vocabulary holds each character once")
        self.chars: list[str] = chars
        self._index = {c: i for i, c in enumerate(chars)}
        # code points in id order, and their sort order, for vectorised encoding
        self._codes = np.array([ord(c) for c in chars], dtype=np.int64)
        self._order = np.argsort(self._codes)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The sorted set of the characters of ``text`` (a pure function of the text)."""
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} characters)"

    def encode(self, text: str) -> torch.Tensor:
        """Token ids, int64 ``[len(text)]``; a character outside the vocabulary is an error."""
        if not text:
            return torch.zeros(0, dtype=torch.long)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        sorted_codes = self._codes[self._order]
        pos = np.searchsorted(sorted_codes, codes).clip(0, max(len(self) - 1, 0))
        bad = sorted_codes[pos] != codes if len(self) else np.ones_like(codes, dtype=bool)
        if bad.any():
            missing = sorted({chr(c) for c in codes[bad]})
            shown = ", ".join(repr(c) for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise LayerLMCError(f"{len(missing)} character(s) not in the vocabulary: {shown}")
        return torch.from_numpy(self._order[pos])

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """The text of token ids (any shape is flattened)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        try:
            return "".join(self.chars[i] for i in ids)
        except IndexError:
            raise LayerLMCError(f"token id out of range for a vocabulary of {len(self)}") from None

    def to_json(self) -> dict[str, object]:
        return {"kind": "char", "size": len(self), "chars": "".join(self.chars)}

    def to_text(self) -> str:
        """``{"kind": "char", "size": N, "chars": "..."}`` as JSON text."""
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_text`; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_text(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> CharVocab:
        path = Path(path)
        if not path.is_file():
            raise LayerLMCError(f"vocabulary file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            chars = data["chars"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise LayerLMCError(
                f"{path} is not a layerlmc vocabulary: {type(err).__name__}: {err}") from None
        if not isinstance(chars, str):
            raise LayerLMCError(f"{path} is not a layerlmc vocabulary: 'chars' is not a string")
        return cls(list(chars))


def token_windows(
    ids: torch.Tensor, seq_len: int, windows: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``windows`` next-token examples cut from a 1-D token sequence.

    Returns ``inputs`` and ``labels``, both int64 ``[windows, seq_len]``, with
    ``labels[i, t] = ids[s_i + t + 1]`` for ``inputs[i, t] = ids[s_i + t]``. The starts ``s_i``
    are a fixed sample drawn with ``seed`` (distinct while ``windows`` does not exceed the
    ``len(ids) - seq_len`` possible starts, with replacement beyond that); a window never reads
    past the end of ``ids``, so windows of two disjoint slices never overlap.
    """
    if ids.dim() != 1:
        raise LayerLMCError(
            f"token windows are cut from a 1-D sequence, got shape {tuple(ids.shape)}")
    if seq_len < 1 or windows < 1:
        raise LayerLMCError(f"seq_len and windows must be at least 1 (got {seq_len} and {windows})")
    starts_available = ids.numel() - seq_len
    if starts_available < 1:
        raise LayerLMCError(
            f"{ids.numel()} tokens are too few for one window of seq_len {seq_len} "
            f"(needs {seq_len + 1}: inputs plus the next-token label)")
    generator = torch.Generator().manual_seed(seed)
    if windows <= starts_available:
        starts = torch.randperm(starts_available, generator=generator)[:windows]
    else:
        starts = torch.randint(starts_available, (windows,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    chunks = ids.long()[starts[:, None] + offsets[None, :]]
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def split_text(ids: torch.Tensor, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``1 - test_fraction`` of the tokens (train part) and the rest (test part)."""
    if not 0 < test_fraction < 1:
        raise LayerLMCError(f"test_fraction must be in (0, 1), got {test_fraction}")
    cut = round(ids.numel() * (1 - test_fraction))
    return ids[:cut], ids[cut:]


def text_vocab(path: str | Path = JARGON_PATH) -> CharVocab:
    """The vocabulary the ``text``/``jargon`` datasets use for ``path``."""
    return CharVocab.from_text(load_text(path))


def text_splits(
    path: str | Path = JARGON_PATH,
    seq_len: int = 128,
    train_windows: int = 4096,
    test_windows: int = 512,
    seed: int = 0,
    test_fraction: float = 0.1,
    vocab_size: int | None = None,
) -> Splits:
    """``{"train": (inputs, labels), "test": (inputs, labels)}`` of next-token windows.

    ``vocab_size`` (optional) is the model's: a text with more distinct characters is an error
    here rather than an index error deep in the embedding.
    """
    text = load_text(path)
    if not text:
        raise LayerLMCError(f"text file {path} is empty")
    vocab = CharVocab.from_text(text)
    if vocab_size is not None and len(vocab) > vocab_size:
        raise LayerLMCError(
            f"text file {path} has {len(vocab)} distinct characters but the model's vocab_size is "
            f"{vocab_size}; set model.args.vocab_size to at least {len(vocab)}")
    ids = vocab.encode(text)
    train_ids, test_ids = split_text(ids, test_fraction)
    for part, part_ids in (("train", train_ids), ("test", test_ids)):
        if part_ids.numel() < seq_len + 1:
            raise LayerLMCError(
                f"text file {path} is too short: its {part} part has {part_ids.numel()} of "
                f"{len(text)} characters (test_fraction {test_fraction}), one window needs "
                f"seq_len + 1 = {seq_len + 1}")
    # different seeds per split, so a change of test_windows never moves the train windows
    splits = {
        "train": token_windows(train_ids, seq_len, train_windows, seed),
        "test": token_windows(test_ids, seq_len, test_windows, seed + 1),
    }
    # a training run keeps the vocabulary beside its checkpoints (layerlmc.registry.Splits)
    return Splits(splits, {"vocab.json": vocab.to_text()})


datasets.register(
    "text", "char-level next-token windows of a local text file (path, seq_len=128, "
    "train_windows=4096, test_windows=512, seed=0, test_fraction=0.1)")(text_splits)

# the built-in corpus under its own name: the same function, whose default path is the Jargon File
datasets.register(
    "jargon", "the Jargon File (Debian jargon-text) as char-level next-token windows, "
    "155 characters (seq_len=128, train_windows=4096, test_windows=512, seed=0)")(text_splits)
