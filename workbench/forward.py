"""Compatibility shim: the forward moved to `workbench.engine` (forward, mixing, gradients)."""

from workbench.engine.forward import MODES, Activations, Forward, Mode, Patch, _Mix, embed, wide
from workbench.engine.gradients import Capture, _qkv_input_grads, ln_backward
from workbench.engine.mixing import State

__all__ = ["MODES", "Activations", "Capture", "Forward", "Mode", "Patch", "State", "_Mix",
           "_qkv_input_grads", "embed", "ln_backward", "wide"]
