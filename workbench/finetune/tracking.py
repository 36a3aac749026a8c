"""Where a run's log rows go: `OUT/finetune_log.jsonl`, the caller's callback, and wandb.

wandb never needs an account: it runs OFFLINE (files under `OUT/wandb/`, `wandb sync` later)
unless the user configured it, i.e. set `WANDB_MODE`, set `WANDB_API_KEY`, or ran
`wandb login` (an api.wandb.ai entry in ~/.netrc). `--no-wandb` turns it off. A resumed run
continues the same wandb run (its id is kept in the checkpoint). If wandb fails to start, the
run goes on without it and says so once.

Invariant: the JSON Lines log holds every train and eval row exactly once per step: on resume,
rows written after the checkpoint's step are dropped before logging continues.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

LOG_FILE = "finetune_log.jsonl"
LOGGED_KINDS = ("start", "train", "eval", "checkpoint", "note", "end")


def wandb_mode() -> str | None:
    """The mode to force on wandb: "offline" unless the user configured wandb (then None)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    return None if _logged_in() else "offline"


def _logged_in() -> bool:
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return host is not None and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Tracker:
    """Fan-out of log rows; `close()` finishes the wandb run."""

    def __init__(self, out: Path, on_log: Callable[[dict[str, Any]], None] | None,
                 resume_step: int | None) -> None:
        self.on_log = on_log
        path = out / LOG_FILE
        kept = []
        if resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a")
        self.run: Any = None
        self.wandb_id: str | None = None

    def start_wandb(self, config: dict[str, Any], out: Path, project: str,
                    run_id: str | None) -> None:
        try:
            import wandb

            mode = wandb_mode()
            # console="off": wandb must not wrap stdout under the CLI's progress bar.
            settings = wandb.Settings(quiet=True, console="off")
            self.run = wandb.init(project=project, name=out.name, dir=str(out), config=config,
                                  id=run_id, resume="allow", settings=settings,
                                  **({"mode": mode} if mode else {}))
            self.wandb_id = self.run.id
            where = "offline, sync with `wandb sync`" if mode == "offline" else "online"
            self.emit({"kind": "note", "message": f"wandb run {self.run.id} ({where})"})
        except Exception as exc:  # wandb raises many types (network, auth, settings)
            self.run = None
            self.emit({"kind": "note", "message": "wandb did not start "
                       f"({type(exc).__name__}: {exc}); continuing without it".splitlines()[0]})

    def emit(self, row: dict[str, Any]) -> None:
        if row["kind"] in LOGGED_KINDS:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        if self.run is not None and row["kind"] in ("train", "eval"):
            self.run.log(_wandb_row(row), step=row["step"])
        if self.on_log is not None:
            self.on_log(row)

    def close(self) -> None:
        self.file.close()
        if self.run is not None:
            self.run.finish()
            self.run = None


def _wandb_row(row: dict[str, Any]) -> dict[str, Any]:
    """`train`/`eval` log rows as wandb metrics (train/loss, val/loss, task/accuracy...)."""
    if row["kind"] == "train":
        return {"train/loss": row["loss"], "train/lr": row["lr"],
                "train/grad_norm": row["grad_norm"], "train/tokens_per_s": row["tokens_per_s"],
                "tokens": row["tokens"]}
    out = {}
    if row.get("val_loss") is not None:
        out["val/loss"] = row["val_loss"]
    if row.get("task_accuracy") is not None:
        out["task/multiplication_accuracy"] = row["task_accuracy"]
        for i, acc in enumerate(row["task_per_digit"]):
            out[f"task/digit_{i}_accuracy"] = acc
    return out
