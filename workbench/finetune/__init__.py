"""`workbench finetune`: fine-tune a GPT-2-family checkpoint on text (FineMath by default).

The flow, one module per stage: `config` (the settings object and its flags) -> `rows` (which
rows of which source) -> `codec` (tokenizer choice and checks) -> `data` (token files, windows,
resumable order) -> `loop` (optimizer, schedule, steps, evaluation) -> `checkpoint` (resumable
state, no pickle) and `tracking` (JSON Lines log, wandb). The CLI renders progress from the log
rows the loop reports through its callback; nothing here prints.
"""

from workbench.finetune.config import FinetuneConfig
from workbench.finetune.loop import FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]
