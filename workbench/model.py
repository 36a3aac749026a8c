"""The resident model: resolve a source, load it through TransformerLens 4, identify it.

Sources, tried in this order:
1. a bundled toy name (`add3`, `mul2`: checkpoints under `workbench/models/`);
2. a local Hugging Face checkpoint directory of a GPT-2-family model;
3. a hub name already in the local Hugging Face cache; downloading only with `download=True`.
A model object a Python user already holds is wrapped with `LoadedModel.wrap`.

The model is booted with `TransformerBridge.boot_transformers` and put in compatibility mode
(LayerNorm folded, unembedding centred: logits differ from the raw model by a per-position
constant, so softmax, logit differences and argmax are unchanged). Identity is the source plus
the SHA-256 of the weight files, so a session knows exactly which weights it ran on.

Invariant: every failure a user can cause (missing path, corrupt or truncated weights, an
architecture we do not support) raises `WorkbenchError` with one line, before any weights load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from workbench.errors import WorkbenchError

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
    """One resident model: the bridge, its tokenizer, identity and card."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    identity: ModelIdentity
    card: ModelCard
    directory: Path | None = None

    @property
    def device(self) -> torch.device:
        return torch.device(self.card.device)

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """(batch, pos) -> (batch, pos, vocab) through the bridge, in chunks, on the CPU."""
        parts = [self.bridge(tokens[i: i + batch_size].to(self.device)).float().cpu()
                 for i in range(0, tokens.shape[0], batch_size)]
        return torch.cat(parts)

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
        """Wrap a `TransformerBridge` or a `transformers` GPT-2 model the user already holds."""
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoTokenizer

        if isinstance(model, TransformerBridge):
            bridge = model
            tokenizer = tokenizer or bridge.tokenizer
        else:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            _check_supported(model_type, name)
            if tokenizer is None:
                raise WorkbenchError("wrapping a transformers model needs its tokenizer too")
            with tempfile.TemporaryDirectory() as tmp:
                boot_tokenizer = tokenizer
                if not tokenizer.init_kwargs.get("name_or_path"):
                    # TransformerLens reloads the tokenizer from its name_or_path (KeyError on
                    # one built in memory): give it a saved copy to reload from.
                    tokenizer.save_pretrained(tmp)
                    boot_tokenizer = AutoTokenizer.from_pretrained(tmp)
                bridge = TransformerBridge.boot_transformers(
                    model.config.name_or_path or name, hf_model=model, tokenizer=boot_tokenizer,
                    device=str(next(model.parameters()).device),
                )
        _compat(bridge)
        weights = torch.cat([p.detach().flatten().float().cpu() for p in bridge.parameters()])
        digest = hashlib.sha256(weights.numpy().tobytes()).hexdigest()
        return cls(bridge, tokenizer, ModelIdentity(f"object:{name}", digest),
                   _card(bridge, name, ""))


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
    device_kw = _placement(device, n_devices)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        str(directory.resolve()), tokenizer=tokenizer, dtype=DTYPES[dtype], **device_kw
    )
    _compat(bridge)
    description = (directory / "MODEL_CARD.md").read_text() if (
        directory / "MODEL_CARD.md").is_file() else ""
    return LoadedModel(bridge, tokenizer, ModelIdentity(label, digest),
                       _card(bridge, label, description), directory)


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


def _placement(device: str, n_devices: int | None) -> dict[str, Any]:
    """`device=auto` picks CUDA when present; `n_devices > 1` spreads layers with a device map."""
    if n_devices is not None and n_devices > 1:
        if not torch.cuda.is_available() or torch.cuda.device_count() < n_devices:
            raise WorkbenchError(f"n_devices={n_devices} needs that many CUDA devices")
        return {"n_devices": n_devices}
    if device == "auto":
        return {"device": "cuda" if torch.cuda.is_available() else "cpu"}
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WorkbenchError("device=cuda but no CUDA device is visible; use device=cpu")
    if device not in ("cpu",) and not device.startswith(("cuda", "mps")):
        raise WorkbenchError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return {"device": device}


def _compat(bridge: Any) -> None:
    bridge.enable_compatibility_mode()
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)


def _card(bridge: Any, name: str, description: str) -> ModelCard:
    cfg = bridge.cfg
    p = next(bridge.parameters())
    return ModelCard(
        name=name, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model,
        d_head=cfg.d_head, d_mlp=cfg.d_mlp, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx,
        n_params=_n_params(bridge),
        device=str(p.device), dtype=str(p.dtype).removeprefix("torch."),
        description=description,
    )


def _n_params(bridge: Any) -> int:
    """Parameters as Hugging Face counts them (tied embeddings once). The bridge's module tree
    also holds split q/k/v copies of each fused attention weight, so summing it over-counts."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init cost even for gpt2-xl
        model = AutoModelForCausalLM.from_config(bridge.original_model.config)
    return int(model.num_parameters())
