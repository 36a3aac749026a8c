"""The resident model: resolve a source, load its weights once, check it, identify it.

Sources, tried in this order:
1. a bundled toy name (`add3`, `mul2`: checkpoints under `workbench/models/`);
2. a local Hugging Face checkpoint directory of a GPT-2-family model;
3. a hub name already in the local Hugging Face cache; downloading only with `download=True`.
A model object a Python user already holds is wrapped with `LoadedModel.wrap`.

The weights are read once into stacked buffers and folded in place (`workbench.checkpoint`:
LayerNorms folded, writing weights centred, as TransformerLens's compatibility mode does); the
engine's `Weights` and a `GPT2LMHeadModel` (the reference forward, eager attention) are both
views of them, so the process holds one copy. Logits are centred over the vocabulary (they
differ from the raw model's by a per-position constant: softmax, logit differences and argmax
are unchanged). The TransformerBridge, which only hook-based paths need, is built on first use
of `LoadedModel.bridge` from a copy (`release_bridge` frees it). Identity is the source plus
the SHA-256 of the weight files, so a session knows exactly which weights it ran on.

Invariant: every failure a user can cause (missing path, corrupt or truncated weights, an
architecture or GPT-2 variant we do not support) raises `WorkbenchError` with one line, before
any weights load; what loads is checked against its own forward when an engine is built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from workbench.checkpoint import Stacked, read_tensors
from workbench.errors import WorkbenchError
from workbench.weights import Weights, activation

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "add3"
SUPPORTED_MODEL_TYPES = ("gpt2",)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
    "float64": torch.float64,  # for precision checks
}
Dtype = Literal["float32", "bfloat16", "float16", "float64"]


@dataclass(frozen=True)
class ModelIdentity:
    """Where the weights came from and their digest (SHA-256 over the weight files)."""

    source: str
    sha256: str

    def short(self) -> str:
        return f"{self.source}@{self.sha256[:12]}"


@dataclass(frozen=True)
class ModelCard:
    """The facts the TUI's model card and `eval --json` show."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_params: int
    device: str
    dtype: str
    description: str = ""


@dataclass
class LoadedModel:
    """One resident model: its folded weights, the reference forward, tokenizer, identity and
    card. `hf` (a `GPT2LMHeadModel` on the same storage as `weights`) is None only for a
    wrapped TransformerBridge, which is then the reference forward itself."""

    tokenizer: Any
    identity: ModelIdentity
    card: ModelCard
    weights: Weights
    hf: Any = None
    directory: Path | None = None
    _bridge: Any = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return torch.device(self.card.device)

    @property
    def bridge(self) -> Any:
        """The TransformerBridge (compatibility mode) for hook-based paths, built on first use
        from a copy of the weights (it holds its own: `release_bridge` when done)."""
        if self._bridge is None:
            if not self.weights.causal:
                raise WorkbenchError("this model is not causal (is_causal=False) and the "
                                     "TransformerLens bridge ignores that: hook-based commands "
                                     "are not available for it")
            self._bridge = _boot_bridge(copy.deepcopy(self.hf), self.tokenizer, self.card.name)
        return self._bridge

    def release_bridge(self) -> None:
        """Drop a bridge built by `bridge` (a wrapped one is the user's and stays)."""
        if self.hf is not None:
            self._bridge = None

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(batch, pos) -> (batch, pos, vocab) float32 on the CPU, centred over the vocabulary:
        the model's own forward (not the engine's), in chunks."""
        parts = []
        for i in range(0, tokens.shape[0], batch_size):
            rows = tokens[i: i + batch_size].to(self.device)
            if self.hf is not None:
                out = self.hf(input_ids=rows).logits.float()
            else:
                out = self.bridge(rows).float()
            parts.append((out - out.mean(-1, keepdim=True)).cpu())
        return torch.cat(parts)

    def variant_fields(self) -> list[str]:
        """The config fields (with their values) that make this GPT-2 differ from the plain
        one in its forward: what a failed engine check names."""
        model = self.hf if self.hf is not None else self._bridge.original_model
        return _variant_fields(model.config.to_dict())

    def default_task(self) -> tuple[str, dict[str, Any]]:
        """The task a bundled or `workbench train`ed model was trained on (else addition)."""
        path = self.directory / "train_config.json" if self.directory else None
        if path is not None and path.is_file():
            cfg = json.loads(path.read_text())
            return cfg["task"], dict(cfg.get("task_options", {}))
        if self.directory is not None and (self.directory / "finetune_config.json").is_file():
            return "multiplication", {"digits": 2, "style": "spaced"}  # the FineMath study
        return "addition", {"digits": 3}

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any = None, name: str = "user-model") -> LoadedModel:
        """Wrap a `TransformerBridge` or a `transformers` GPT-2 model the user already holds,
        through the same supported-architecture and config checks as `load_model`. A
        transformers model is copied into our own folded buffers (the user's object is left
        as it was); a bridge is put in compatibility mode and its folded weights copied."""
        from transformer_lens.model_bridge import TransformerBridge

        if isinstance(model, TransformerBridge):
            original = getattr(getattr(model, "original_model", None), "config", None)
            _check_supported(getattr(original, "model_type", None), name)
            _check_config(original.to_dict(), name)
            tokenizer = tokenizer or model.tokenizer
            _compat(model)
            weights = Weights.from_bridge(model)
            h = hashlib.sha256()
            for t in model.state_dict().values():
                h.update(t.detach().float().cpu().numpy().tobytes())
            card = _card(original, weights, name, "")
            return cls(tokenizer, ModelIdentity(f"object:{name}", h.hexdigest()), card, weights,
                       None, None, model)
        config = getattr(model, "config", None)
        _check_supported(getattr(config, "model_type", None), name)
        if tokenizer is None:
            raise WorkbenchError("wrapping a transformers model needs its tokenizer too")
        assert config is not None
        _check_config(config.to_dict(), name)
        state = model.state_dict()
        h = hashlib.sha256()
        for t in state.values():
            h.update(t.detach().float().cpu().numpy().tobytes())
        p = next(model.parameters())
        stacked = _stacked(copy.deepcopy(config), state.items(), p.dtype, p.device, name)
        hf = stacked.hf_model()
        weights = Weights.from_stacked(stacked, hf)
        return cls(tokenizer, ModelIdentity(f"object:{name}", h.hexdigest()),
                   _card(hf.config, weights, name, ""), weights, hf)


def load_model(source: str = DEFAULT_MODEL, device: str = "auto", dtype: Dtype = "float32",
               download: bool = False, n_devices: int | None = None) -> LoadedModel:
    """Resolve `source` (bundled name, checkpoint directory or cached hub name) and load it."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise WorkbenchError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    directory, label = resolve(source, download)
    config = _read_config(directory)
    _check_supported(config.get("model_type"), label)
    files = weight_files(directory)
    digest = _sha256(files)
    for f in files:
        _check_weights(f)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise WorkbenchError(
            f"no usable tokenizer in {directory} ({type(exc).__name__}); "
            "save the tokenizer with the checkpoint (tokenizer.json or vocab.json + merges.txt)"
        ) from None
    placed = _placement(device, n_devices)
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(directory.resolve()))
    _check_config(hf_config.to_dict(), label)
    stacked = _stacked(hf_config, read_tensors(files), DTYPES[dtype], placed, label)
    hf = stacked.hf_model()
    weights = Weights.from_stacked(stacked, hf)
    description = (directory / "MODEL_CARD.md").read_text() if (
        directory / "MODEL_CARD.md").is_file() else ""
    from workbench import memory

    memory.trim()  # the conversion's freed buffers go back to the OS (resident ~ the weights)
    return LoadedModel(tokenizer, ModelIdentity(label, digest),
                       _card(hf.config, weights, label, description), weights, hf, directory)


def _stacked(config: Any, tensors: Any, dtype: torch.dtype, device: str | torch.device,
             label: str) -> Stacked:
    """The checkpoint's tensors in one folded copy (`workbench.checkpoint`)."""
    config.name_or_path = config.name_or_path or label
    stacked = Stacked.empty(config, dtype, device)
    stacked.fill(iter(tensors), label)
    stacked.fold()
    return stacked


# Config fields that change a GPT-2's forward, with their plain values (what a failed engine
# check names when one differs).
VARIANT_DEFAULTS: dict[str, Any] = {
    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False, "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5, "is_causal": True, "tie_word_embeddings": True,
    "add_cross_attention": False,
}


def _variant_fields(config: dict[str, Any]) -> list[str]:
    return [f"{k}={config[k]!r}" for k, v in VARIANT_DEFAULTS.items()
            if k in config and config[k] != v]


def _check_config(config: dict[str, Any], label: str) -> None:
    """GPT-2 variants the engine cannot run are refused here, before any weights load."""
    if config.get("add_cross_attention"):
        raise WorkbenchError(f"{label}: config add_cross_attention=True (an encoder-decoder "
                             "GPT-2) is not supported; use a decoder-only checkpoint")
    try:
        activation(str(config.get("activation_function", "gelu_new")))
    except WorkbenchError as exc:
        raise WorkbenchError(f"{label}: {exc}") from None
    n_embd, n_head = config.get("n_embd", 768), config.get("n_head", 12)
    if n_embd % n_head:
        raise WorkbenchError(f"{label}: n_embd={n_embd} is not a multiple of n_head={n_head}")


def _boot_bridge(hf: Any, tokenizer: Any, name: str) -> Any:
    """A TransformerBridge in compatibility mode around `hf` (which it takes over)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        boot_tokenizer = tokenizer
        if not tokenizer.init_kwargs.get("name_or_path"):
            # TransformerLens reloads the tokenizer from its name_or_path (KeyError on one
            # built in memory): give it a saved copy to reload from.
            tokenizer.save_pretrained(tmp)
            boot_tokenizer = AutoTokenizer.from_pretrained(tmp)
        bridge = TransformerBridge.boot_transformers(
            hf.config.name_or_path or name, hf_model=hf, tokenizer=boot_tokenizer,
            device=str(next(hf.parameters()).device))
    _compat(bridge)
    return bridge


def resolve(source: str, download: bool = False) -> tuple[Path, str]:
    """Source -> (checkpoint directory, label for the session header)."""
    bundled = BUNDLED_DIR / source
    if "/" not in source and bundled.is_dir():
        return bundled, source
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve())
    if path.exists():
        raise WorkbenchError(f"{source} is a file; give the checkpoint directory that holds it")
    looks_like_path = source.startswith((".", "/", "~")) or path.suffix != ""
    if looks_like_path:
        raise WorkbenchError(f"checkpoint directory {source} does not exist: check the path")
    return _from_hub_cache(source, download), source


def bundled_names() -> list[str]:
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def _from_hub_cache(name: str, download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        if not download:
            raise WorkbenchError(
                f"{name!r} is not a bundled model ({', '.join(bundled_names())}), a directory, "
                "or in the local Hugging Face cache; pass --download to fetch it from the hub"
            ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as exc:  # network and hub errors come in many types
        raise WorkbenchError(f"could not download {name!r}: {exc}".splitlines()[0]) from None


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise WorkbenchError(f"{directory} has no config.json: is it a Hugging Face checkpoint?")
    try:
        return dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"{path} is not valid JSON ({exc.msg})") from None


def _check_supported(model_type: str | None, label: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise WorkbenchError(
            f"{label}: architecture {model_type!r} is not supported yet; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (GPT-2 family)"
        )


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint: one file, or the shards its index names."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise WorkbenchError(f"{directory}: shard {missing[0]} named in {index_name} "
                                     "is missing; copy the whole checkpoint")
            return [directory / s for s in shards]
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise WorkbenchError(f"{directory} has no weights (model.safetensors or pytorch_model.bin)")


def _check_weights(path: Path) -> None:
    """Catch a corrupt or truncated safetensors file before loading: its header must parse and
    the data it describes must fit in the file."""
    if path.suffix != ".safetensors":
        return
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WorkbenchError(f"{path} is truncated (under 8 bytes); copy it again")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise WorkbenchError(f"{path} is corrupt or truncated (bad header); copy it again")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WorkbenchError(f"{path} is corrupt (unreadable header); copy it again") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        raise WorkbenchError(f"{path} is truncated ({size} bytes, header promises more); "
                             "copy it again")


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _placement(device: str, n_devices: int | None) -> str:
    """`device=auto` picks CUDA when present. The engine runs on one device."""
    if n_devices is not None and n_devices > 1:
        raise WorkbenchError(f"n_devices={n_devices}: the engine runs on one device; use "
                             "device=cuda:N (or dtype=bfloat16 to halve the memory)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WorkbenchError("device=cuda but no CUDA device is visible; use device=cpu")
    if device not in ("cpu",) and not device.startswith(("cuda", "mps")):
        raise WorkbenchError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return device


def _compat(bridge: Any) -> None:
    bridge.enable_compatibility_mode()
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)


def _card(config: Any, w: Weights, name: str, description: str) -> ModelCard:
    return ModelCard(
        name=name, n_layers=w.n_layers, n_heads=w.n_heads, d_model=w.d_model,
        d_head=w.d_head, d_mlp=w.d_mlp, d_vocab=w.W_E.shape[0], n_ctx=w.W_pos.shape[0],
        n_params=_n_params(config), device=str(w.W_E.device),
        dtype=str(w.dtype).removeprefix("torch."), description=description,
    )


def _n_params(config: Any) -> int:
    """Parameters as Hugging Face counts them (tied embeddings once)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init cost even for gpt2-xl
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    return int(model.num_parameters())
