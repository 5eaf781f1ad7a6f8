"""Hugging Face models from local folders (the optional extra ``layerlmc[hf]``).

* ``--model hf:PATH`` (:func:`build_model`): the architecture of the folder's ``config.json``,
  wrapped (:class:`HFModel`) so that ``model(input_ids)`` returns the logits tensor while the
  state-dict keys stay the Hugging Face ones
  (``gpt_neox.layers.0.attention.query_key_value.weight``), so layer groups carry the Hugging
  Face module names.
* :func:`load_folder`: the state dict of a model folder (``model.safetensors``, sharded
  safetensors with their index, or ``pytorch_model.bin`` read with ``weights_only=True``);
  :func:`layerlmc.core.checkpoints.load_state_dict` calls it for folders.
* The dataset ``hf-text``: next-token windows of a text file tokenized with the folder's own
  tokenizer (masked-token windows for a masked LM).

Nothing here touches the network (``local_files_only``), and ``transformers`` is imported only
when one of these is used, so ``import layerlmc`` stays light.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from .core.checkpoints import Origin, StateDict, register_folder_loader, tag_origin
from .errors import LayerLMCError, first_line
from .registry import datasets

#: the prefix of a model spec naming a Hugging Face folder
SPEC_PREFIX = "hf:"
CONFIG_FILE = "config.json"
#: weight files in the order transformers prefers them
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
INSTALL_HINT = "pip install 'layerlmc[hf]'"
#: config fields that do not change what a model computes from token ids
_IGNORED_CONFIG_FIELDS = {
    "_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "_commit_hash",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "tokenizer_class", "task_specific_params", "output_attentions", "output_hidden_states",
    "return_dict", "_attn_implementation_autoset", "_attn_implementation", "id2label", "label2id",
}
_SAFETENSORS_DTYPES = {
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
}


def require_transformers() -> ModuleType:
    """The ``transformers`` module, or a one-line error that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise LayerLMCError(
            f"Hugging Face models need the transformers package: {INSTALL_HINT}") from None
    return transformers


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def check_folder(path: str | Path, weights: bool = True) -> Path:
    """``path`` as a model folder with ``config.json`` (and, with ``weights``, its weight files,
    every shard of an index included); otherwise a one-line error naming what is missing."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise LayerLMCError(f"Hugging Face model folder not found: {folder}")
    if not folder.is_dir():
        raise LayerLMCError(f"{folder} is not a folder; a Hugging Face model is a folder with "
                            f"{CONFIG_FILE} and model.safetensors (or pytorch_model.bin)")
    if not (folder / CONFIG_FILE).is_file():
        raise LayerLMCError(
            f"{folder} is a folder without {CONFIG_FILE}: give a checkpoint file, or a Hugging "
            f"Face model folder with {CONFIG_FILE} and model.safetensors (or pytorch_model.bin)")
    if weights:
        weight_files(folder)
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The files holding the weights of a model folder (the shards of an index)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise LayerLMCError(f"cannot read the shard index {path}: {type(err).__name__}: "
                                f"{first_line(err)}") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise LayerLMCError(f"{folder}: {len(missing)} shard(s) listed in {name} are missing, "
                                f"e.g. {missing[0]}")
        return [folder / s for s in shards]
    raise LayerLMCError(f"{folder} has {CONFIG_FILE} but no weights (expected one of "
                        f"{', '.join(WEIGHT_FILES)})")


def load_config(folder: Path):
    """The folder's ``PretrainedConfig``."""
    transformers = require_transformers()
    with _quiet(transformers):
        try:
            return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - unknown model types, bad JSON, remote code, ...
            raise LayerLMCError(f"cannot read {folder / CONFIG_FILE}: {type(err).__name__}: "
                                f"{first_line(err)}") from None


def model_class(config, folder: Path, architecture: str | None = None) -> type:
    """The transformers class of ``architecture``, else of the config's ``architectures``, else
    the causal LM of its model type."""
    transformers = require_transformers()
    names = [architecture] if architecture else list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            return cls
    if names:
        raise LayerLMCError(
            f"transformers {transformers.__version__} has no model class '{names[0]}' (named by "
            f"{folder / CONFIG_FILE if not architecture else 'architecture='}); upgrade "
            "transformers or pass --model-arg architecture=CLASS")
    try:
        return transformers.AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise LayerLMCError(
            f"{folder / CONFIG_FILE} names no architectures and model type "
            f"'{config.model_type}' has no causal LM; pass --model-arg architecture=CLASS"
        ) from None


class HFModel(torch.nn.Module):
    """A Hugging Face model as a function of token ids ``[batch, T]`` returning logits.

    The Hugging Face model's children are registered as this module's own, so state-dict keys,
    parameter names and layer groups are the Hugging Face ones unchanged and
    ``functional_call`` reaches the modules the Hugging Face forward uses. Logits are
    ``[batch, T, vocab]`` for language models (``[batch, classes]`` for classifiers).

    With ``mask_token_id`` (masked LMs), inputs that hold mask tokens give the logits at those
    positions only, ``[batch, k, vocab]`` in position order, which fits labels ``[batch, k]``
    (the ``hf-text`` dataset's masked windows); every sequence must then hold ``k`` of them.
    """

    def __init__(self, model: torch.nn.Module, mask_token_id: int | None = None):
        super().__init__()
        own = [n for n, _ in model.named_parameters(recurse=False)]
        own += [n for n, _ in model.named_buffers(recurse=False)]
        if own:
            raise LayerLMCError(f"{type(model).__name__} holds tensors outside its submodules "
                                f"({', '.join(own)}), which layerlmc cannot interpolate")
        # a plain attribute, not a submodule: as a submodule it would prefix every key
        object.__setattr__(self, "hf_model", model)
        for name, child in model.named_children():
            self.add_module(name, child)
        self.mask_token_id = mask_token_id

    @property
    def architecture(self) -> str:
        return type(self.hf_model).__name__

    def train(self, mode: bool = True) -> HFModel:
        super().train(mode)
        self.hf_model.training = mode  # the HF model's own flag (its children share ours)
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        output = self.hf_model(input_ids=input_ids, return_dict=True)
        logits = output.logits if hasattr(output, "logits") else output[0]
        if self.mask_token_id is None:
            return logits
        masked = input_ids == self.mask_token_id
        if not bool(masked.any()):
            return logits
        counts = masked.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError("every sequence of a batch must hold the same number of mask tokens")
        return logits[masked].reshape(input_ids.shape[0], int(counts[0]), logits.shape[-1])

    def extra_repr(self) -> str:
        return f"architecture={self.architecture}"


def build_model(
    path: str,
    dtype: str = "auto",
    architecture: str | None = None,
    mask_token_id: int | None = None,
) -> HFModel:
    """The model ``hf:PATH``: the architecture of ``PATH/config.json`` with random weights
    (every analysis evaluates the checkpoints' weights through it).

    ``dtype`` is ``auto`` (what :func:`load_folder` gives: the config's dtype, else the stored
    weights') or a torch dtype name such as ``float32``. ``architecture`` overrides the config's
    class (e.g. ``GPTNeoXForCausalLM``). ``mask_token_id`` defaults, for masked LMs, to the
    folder's tokenizer's.
    """
    folder = check_folder(path, weights=False)
    transformers = require_transformers()
    config = load_config(folder)
    cls = model_class(config, folder, architecture)
    target = _resolve_dtype(dtype, config, folder)
    with _quiet(transformers):
        try:
            # built in the target dtype: a float32 copy first would double the memory
            model = cls._from_config(config, **{_dtype_keyword(transformers): target})
        except Exception as err:  # noqa: BLE001 - transformers rejects configs in many ways
            raise LayerLMCError(f"cannot build {cls.__name__} from {folder / CONFIG_FILE}: "
                                f"{type(err).__name__}: {first_line(err)}") from None
    model = model.to(target)
    # a forward pass per batch, never generation: a cache would only cost memory
    model.config.use_cache = False
    if mask_token_id is None and cls.__name__.endswith("ForMaskedLM") and _has_tokenizer(folder):
        mask_token_id = load_tokenizer(folder).mask_token_id
    return HFModel(model, mask_token_id).eval()


def load_folder(path: str | Path) -> StateDict:
    """The state dict of a Hugging Face model folder, with the keys of ``hf:PATH``'s model
    (tied tensors, such as GPT-2's ``lm_head.weight`` and ``transformer.wte.weight``, under every
    key, as one tensor).

    transformers reads the files (``weights_only=True`` for ``.bin``, no network), which also
    applies its renames of legacy keys (e.g. Pythia's ``embed_out`` is ``lm_head`` in
    transformers 5). Weights the architecture needs but the files lack are an error here (where
    transformers would initialise them at random).
    """
    folder = check_folder(path, weights=True)
    transformers = require_transformers()
    config = load_config(folder)
    cls = model_class(config, folder)
    kwargs = {_dtype_keyword(transformers): "auto", "local_files_only": True,
              "output_loading_info": True}
    with _quiet(transformers):
        try:
            model, info = cls.from_pretrained(str(folder), **kwargs)
        except Exception as err:  # noqa: BLE001 - damaged files fail in many ways
            raise LayerLMCError(f"cannot load the {cls.__name__} weights of {folder}: "
                                f"{type(err).__name__}: {first_line(err)}") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
        shown = ", ".join(missing[:4]) + more
        raise LayerLMCError(f"{folder}: the weights lack {len(missing)} tensor(s) that "
                            f"{cls.__name__} needs: {shown}")
    mismatched = list(info.get("mismatched_keys") or ())
    if mismatched:
        first = mismatched[0][0] if isinstance(mismatched[0], tuple) else mismatched[0]
        raise LayerLMCError(f"{folder}: {len(mismatched)} tensor(s) do not fit {cls.__name__} "
                            f"of {CONFIG_FILE}, e.g. {first}")
    state = model.state_dict()
    tag_origin(state, _origin(config, cls, folder))
    return state


def _origin(config, cls: type, folder: Path) -> Origin:
    sizes = []
    for attr, unit in (("hidden_size", "hidden"), ("num_hidden_layers", "layers"),
                       ("vocab_size", "vocab")):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            sizes.append(f"{value} {unit}" if unit == "layers" else f"{unit} {value}")
    settings = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_CONFIG_FIELDS}
    return Origin(
        path=str(folder), architecture=cls.__name__, summary=", ".join(sizes),
        settings=json.dumps(settings, sort_keys=True, default=str),
    )


def _dtype_keyword(transformers: ModuleType) -> str:
    # transformers 4.56 renamed torch_dtype to dtype
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _resolve_dtype(dtype: str, config, folder: Path) -> torch.dtype:
    if dtype != "auto":
        value = getattr(torch, str(dtype), None)
        if not isinstance(value, torch.dtype) or not value.is_floating_point:
            raise LayerLMCError(f"dtype must be auto or a floating torch dtype such as float32, "
                                f"got '{dtype}'")
        return value
    # the rule of from_pretrained(dtype="auto"), so that the model fits load_folder's tensors
    stored = getattr(config, "dtype", None)
    if stored is None and not hasattr(config, "dtype"):
        stored = getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    if isinstance(stored, torch.dtype):
        return stored
    try:
        files = weight_files(folder)
    except LayerLMCError:
        return torch.float32
    return _first_float_dtype(files[0]) or torch.float32


def _first_float_dtype(path: Path) -> torch.dtype | None:
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - a safe_open handle is no mapping
                    dtype = _SAFETENSORS_DTYPES.get(handle.get_slice(key).get_dtype())
                    if dtype is not None:
                        return dtype
            return None
        state = torch.load(str(path), map_location="meta", weights_only=True)
    except Exception:  # noqa: BLE001 - the loader reports a damaged file in detail
        return None
    tensors = state.values() if isinstance(state, dict) else ()
    return next((t.dtype for t in tensors if isinstance(t, torch.Tensor)
                 and t.is_floating_point()), None)


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """transformers' warnings and progress bars off: layerlmc reports what matters itself."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | Path):
    """The tokenizer stored in a model folder (local files only)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LayerLMCError(f"tokenizer folder not found: {folder}")
    if not _has_tokenizer(folder):
        # transformers would build an empty tokenizer from config.json alone
        raise LayerLMCError(
            f"{folder} holds no tokenizer ({', '.join(TOKENIZER_FILES[:4])}, ...); pass a "
            "char-level dataset instead: --data text --data-arg path=FILE (the model's "
            "vocab_size must cover the text's characters)")
    transformers = require_transformers()
    with _quiet(transformers):
        try:
            return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - missing tokenizer libraries, bad files, ...
            raise LayerLMCError(f"cannot load the tokenizer of {folder}: {type(err).__name__}: "
                                f"{first_line(err)}") from None


def _architectures(folder: Path) -> list[str]:
    try:
        return list(json.loads((folder / CONFIG_FILE).read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return []


def _vocab_size(folder: Path) -> int | None:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    size = config.get("vocab_size") if isinstance(config, dict) else None
    return size if isinstance(size, int) else None


@datasets.register(
    "hf-text", "text windows tokenized with a Hugging Face folder's tokenizer (tokenizer=PATH, "
    "path=jargon, seq_len=128, train_windows=256, test_windows=256, seed=0; layerlmc[hf])")
def hf_text(
    tokenizer: str,
    path: str | None = None,
    seq_len: int = 128,
    train_windows: int = 256,
    test_windows: int = 256,
    seed: int = 0,
    test_fraction: float = 0.1,
    objective: str = "auto",
    mask_prob: float = 0.15,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train": (inputs, labels), "test": (inputs, labels)}`` from a local text file (default
    Debian's Jargon File) tokenized with the tokenizer in folder ``tokenizer``.

    The text is split by position (the last ``test_fraction`` of the tokens is the test part)
    and each split is a seeded sample of windows of ``seq_len`` tokens. ``objective``:
    ``causal`` — labels are the next tokens, ``[windows, seq_len]``; ``masked`` — ``round(
    mask_prob * seq_len)`` positions per window become the mask token and the labels are the
    original tokens there, ``[windows, k]`` (what :class:`HFModel` returns for a masked LM);
    ``auto`` — ``masked`` when the folder's config names a ``...ForMaskedLM``.
    """
    from .data.text import JARGON_PATH, load_text, split_text, token_windows

    folder = Path(tokenizer).expanduser()
    if objective == "auto":
        masked = any(a.endswith("ForMaskedLM") for a in _architectures(folder))
        objective = "masked" if masked else "causal"
    if objective not in ("causal", "masked"):
        raise LayerLMCError(f"objective must be auto, causal or masked, got '{objective}'")
    text_path = Path(path).expanduser() if path else JARGON_PATH
    text = load_text(text_path)
    tok = load_tokenizer(folder)
    encoded = tok(text, add_special_tokens=False, verbose=False, return_attention_mask=False)
    ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
    if ids.numel() == 0:
        raise LayerLMCError(f"the tokenizer of {folder} turns {text_path} into no tokens")
    vocab = _vocab_size(folder)
    if vocab is not None and int(ids.max()) >= vocab:
        raise LayerLMCError(f"the tokenizer of {folder} gives token id {int(ids.max())} but the "
                            f"model's vocab_size is {vocab}")
    train_ids, test_ids = split_text(ids, test_fraction)
    for part, part_ids in (("train", train_ids), ("test", test_ids)):
        if part_ids.numel() < seq_len + 1:
            raise LayerLMCError(
                f"{text_path} is too short: its {part} part has {part_ids.numel()} tokens, one "
                f"window needs seq_len + 1 = {seq_len + 1}")
    # different seeds per split, as in the char-level datasets
    splits = {
        "train": token_windows(train_ids, seq_len, train_windows, seed),
        "test": token_windows(test_ids, seq_len, test_windows, seed + 1),
    }
    if objective == "masked":
        splits = {name: _mask(inputs, tok, mask_prob, seed + i)
                  for i, (name, (inputs, _)) in enumerate(splits.items())}
    return splits


def _mask(
    inputs: torch.Tensor, tok, mask_prob: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    mask_id = tok.mask_token_id
    if mask_id is None:
        raise LayerLMCError("objective masked needs a tokenizer with a mask token")
    if not 0 < mask_prob <= 1:
        raise LayerLMCError(f"mask_prob must be in (0, 1], got {mask_prob}")
    inputs = inputs.clone()
    # a mask token already in the text would be taken for a masked position
    natural = inputs == mask_id
    if bool(natural.any()):
        if tok.unk_token_id is None:
            raise LayerLMCError("the text holds the mask token and the tokenizer has no unknown "
                                "token to replace it with")
        inputs[natural] = tok.unk_token_id
    count = max(1, round(mask_prob * inputs.shape[1]))
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(inputs.shape, generator=generator)
    positions = scores.argsort(dim=1)[:, :count].sort(dim=1).values
    labels = inputs.gather(1, positions)
    return inputs.scatter(1, positions, mask_id), labels


# every folder given as a checkpoint is read as a Hugging Face model folder: its own checks say
# what such a folder lacks
register_folder_loader("huggingface", lambda folder: True, load_folder,
                       lambda folder: check_folder(folder, weights=True))
