"""The finished model as an ordinary checkpoint directory, with its config and model card.

`export` writes into `OUT/` what `load_model` needs (config.json, model.safetensors, the
tokenizer) plus `finetune_config.json` (the run's settings and how far it got) and
`MODEL_CARD.md` (base model, data, recipe, results and the command that repeats the run).

Invariant: only a finished run is exported; an interrupted one leaves `OUT/checkpoint/` alone.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from workbench.finetune.codec import Codec
from workbench.finetune.config import FinetuneConfig, command_line
from workbench.finetune.data import TokenSplits


def export(out: Path, model: Any, codec: Codec, cfg: FinetuneConfig, step: int, tokens: int,
           val_loss: float | None, accuracy: float | None, data: TokenSplits) -> None:
    """The finished model as an ordinary checkpoint in `out`: weights, tokenizer, card."""
    model.save_pretrained(str(out))
    codec.save(out)
    (out / "finetune_config.json").write_text(json.dumps(
        {**replace(cfg, resume=False).to_json(), "steps_done": step, "tokens_done": tokens},
        indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(_card(out, model, codec, cfg, step, tokens, val_loss,
                                             accuracy, data))


def _card(out: Path, model: Any, codec: Codec, cfg: FinetuneConfig, step: int, tokens: int,
          val_loss: float | None, accuracy: float | None, data: TokenSplits) -> str:
    n_params = model.num_parameters()
    meta = data.meta
    val = "n/a" if val_loss is None else f"{val_loss:.4f}"
    task = ("skipped (the tokenizer cannot make each digit one token)" if accuracy is None
            else f"{accuracy:.4f}")
    return f"""# {out.name}

{cfg.model} fine-tuned by Circuit Workbench's `workbench finetune`.

- **Base model**: {cfg.model} ({n_params:,} parameters); tokenizer {codec.name}.
- **Data**: {meta.get('source', cfg.data)}, {meta['train_rows']:,} training rows
  ({meta['train_tokens']:,} tokens) and {meta['val_rows']:,} held-out rows
  ({meta['val_tokens']:,} tokens), sampled with seed {cfg.seed}; documents start with the
  end-of-text token.
- **Recipe**: AdamW (lr {cfg.lr} -> {cfg.min_lr} cosine after {cfg.warmup} warmup steps, betas
  {cfg.beta1}/{cfg.beta2}, weight decay {cfg.weight_decay} on 2-D parameters), block
  {cfg.block_size}, {cfg.micro_batch} x {cfg.grad_accum} windows per step
  ({cfg.tokens_per_step:,} tokens), gradient clipping {cfg.grad_clip}, dropout {cfg.dropout}.
- **Trained**: {step} steps, {tokens:,} tokens.
- **Held-out loss**: {val}.
- **2-digit multiplication exact match** (spaced, teacher forced): {task}.

Reproduce:

```
{command_line(cfg)}
```

The per-step log is `finetune_log.jsonl`; `checkpoint/` resumes training (`--resume`).
"""
