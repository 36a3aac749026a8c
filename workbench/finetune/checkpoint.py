"""Resumable checkpoints of a fine-tuning run, in `OUT/checkpoint/`, without pickle.

A checkpoint directory is an ordinary Hugging Face checkpoint (`save_pretrained`: config.json,
model.safetensors in float32, the tokenizer) that `load_model` opens, plus:
- `optimizer.safetensors`: every AdamW state tensor, keyed `state.{param index}.{name}`;
- `rng.safetensors`: the torch CPU (and CUDA) generator states;
- `state.json`: the step, the data position `(epoch, cursor)`, tokens seen, the wandb run id,
  the optimizer's param groups (hyperparameters) and the run's config.
It is written to `checkpoint.tmp/` and swapped in, so an interruption while saving leaves the
previous checkpoint whole. Loading uses safetensors and JSON only (no `torch.load`).

Invariant: weights, optimizer moments, RNG and data position are saved at the same completed
step, so training on from a checkpoint repeats the uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from workbench.errors import WorkbenchError

STATE_VERSION = 1
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class RunState:
    """Where a run stands after `step` completed optimizer steps."""

    step: int
    epoch: int
    cursor: int
    tokens: int
    wandb_id: str | None
    config: dict[str, Any]


def save(directory: Path, model: Any, optimizer: torch.optim.Optimizer, state: RunState,
         save_tokenizer: Any) -> None:
    """Write a checkpoint (model, tokenizer, optimizer, RNG, state) atomically to `directory`."""
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    save_tokenizer(tmp)
    tensors, groups = _flatten(optimizer.state_dict())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file(_rng_states(), str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(
        {"version": STATE_VERSION, **asdict(state), "param_groups": groups}, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def read_state(directory: Path) -> RunState:
    """The `RunState` of a checkpoint, or a one-line error when there is none."""
    path = directory / "state.json"
    if not path.is_file():
        raise WorkbenchError(f"no checkpoint to resume in {directory.parent} "
                             "(checkpoint/state.json is missing); drop --resume to start")
    raw = json.loads(path.read_text())
    if raw.get("version") != STATE_VERSION:
        raise WorkbenchError(f"{path} has version {raw.get('version')}, expected "
                             f"{STATE_VERSION}; it was written by another workbench")
    fields = RunState.__dataclass_fields__
    return RunState(**{k: raw[k] for k in fields})


def restore(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    """Load the optimizer state and the RNG states saved in `directory`."""
    raw = json.loads((directory / "state.json").read_text())
    tensors = load_file(str(directory / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g
              for g in raw["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise WorkbenchError(f"the optimizer state in {directory} does not fit this model "
                             f"({exc})".splitlines()[0]) from None
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def _flatten(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name} is not a tensor")
            tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return tensors, groups


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = s
    return states
