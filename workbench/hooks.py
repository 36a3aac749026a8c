"""Hook names and hook lifetimes: the one module that talks to the bridge's hook points.

TransformerLens addresses activations by strings (`blocks.3.attn.hook_pattern`). Here they are
built from a typed `Site` and a layer (`hook_name(Site.PATTERN, 3)`), so a typo is a type error,
not a hook that silently never fires. Model state changes only inside context managers that
restore it in `finally`:

1. `hooks(bridge, [(name, fn), ...])` adds forward hooks and removes exactly those it added;
2. `hook_flags(bridge, split_qkv=..., attn_result=...)` sets `use_split_qkv_input` /
   `use_attn_result` (which the q/k/v-input and per-head result sites need) and restores them;
3. `capture(bridge, tokens, names)` runs the bridge once under `torch.no_grad()` and returns the
   recorded activations, detached.

Invariant: nothing outside this module builds a hook-name string, and every hook added here is
gone when its `with` block ends, whether it ended normally, by an exception or by Esc.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from workbench.errors import WorkbenchError

HookFn = Callable[..., Tensor | None]  # fn(activation, hook=HookPoint) -> replacement or None


class Site(Enum):
    """Where an activation lives: the TransformerLens name below `blocks.L.` (or at the root)."""

    EMBED = "hook_embed"  # (batch, pos, d_model) token embedding
    POS_EMBED = "hook_pos_embed"  # (batch, pos, d_model) position embedding
    RESID_PRE = "hook_resid_pre"  # (batch, pos, d_model)
    RESID_MID = "hook_resid_mid"
    RESID_POST = "hook_resid_post"
    ATTN_OUT = "hook_attn_out"
    MLP_OUT = "hook_mlp_out"
    Q_INPUT = "hook_q_input"  # (batch, pos, head, d_model); needs split_qkv
    K_INPUT = "hook_k_input"
    V_INPUT = "hook_v_input"
    Q = "attn.hook_q"  # (batch, pos, head, d_head)
    K = "attn.hook_k"
    V = "attn.hook_v"
    Z = "attn.hook_z"
    SCORES = "attn.hook_attn_scores"  # (batch, head, query, key) before softmax
    PATTERN = "attn.hook_pattern"  # (batch, head, query, key)
    RESULT = "attn.hook_result"  # (batch, pos, head, d_model); needs attn_result
    MLP_PRE = "mlp.hook_pre"  # (batch, pos, d_mlp)
    MLP_POST = "mlp.hook_post"
    MLP_IN = "hook_mlp_in"  # (batch, pos, d_model): resid_mid, before ln2
    LN2_NORMALIZED = "ln2.hook_normalized"  # (batch, pos, d_model): the MLP's input after ln2


ROOT_SITES = frozenset({Site.EMBED, Site.POS_EMBED})
NEEDS_FLAG: dict[Site, str] = {
    Site.Q_INPUT: "use_split_qkv_input", Site.K_INPUT: "use_split_qkv_input",
    Site.V_INPUT: "use_split_qkv_input", Site.RESULT: "use_attn_result",
}


def hook_name(site: Site, layer: int | None = None) -> str:
    """`hook_name(Site.PATTERN, 3)` -> `blocks.3.attn.hook_pattern`; root sites take no layer."""
    if site in ROOT_SITES:
        if layer is not None:
            raise WorkbenchError(f"{site.value} is not per layer; give no layer")
        return site.value
    if layer is None or layer < 0:
        raise WorkbenchError(f"{site.value} needs a layer >= 0, got {layer}")
    return f"blocks.{layer}.{site.value}"


@contextmanager
def hooks(bridge: Any, fwd: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Add forward hooks `(name, fn)` for the `with` block; remove exactly those in `finally`.

    Legacy names (`hook_resid_pre`) resolve to the same hook point as canonical ones
    (`hook_in`); `fn` runs once per forward. Only these handles are removed: hooks that someone
    else added stay.
    """
    added: list[tuple[Any, Any]] = []  # (hook point, LensHandle)
    try:
        for name, fn in fwd:
            point = bridge.get_hook_point(name)
            if point is None:
                raise WorkbenchError(f"hook point {name} does not exist on this model")
            try:
                bridge.check_hooks_to_add(point, name, fn, dir="fwd")
            except ValueError:
                flag = NEEDS_FLAG.get(_site_of(name), "a use_* flag")
                raise WorkbenchError(f"hook point {name} needs {flag} on: wrap the run in "
                                     "workbench.hooks.hook_flags") from None
            added.append((point, point.add_hook(fn, dir="fwd")))
        yield
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            point.fwd_hooks[:] = [h for h in point.fwd_hooks if h is not handle]


@contextmanager
def hook_flags(bridge: Any, split_qkv: bool | None = None, attn_result: bool | None = None
               ) -> Iterator[None]:
    """Set `use_split_qkv_input` / `use_attn_result` (None leaves one alone); restore both."""
    cfg = bridge.cfg
    before = (bool(cfg.use_split_qkv_input), bool(cfg.use_attn_result))
    try:
        if split_qkv is not None and split_qkv != before[0]:
            bridge.set_use_split_qkv_input(split_qkv)
        if attn_result is not None and attn_result != before[1]:
            bridge.set_use_attn_result(attn_result)
        yield
    finally:
        if bool(cfg.use_attn_result) != before[1]:
            bridge.set_use_attn_result(before[1])
        if bool(cfg.use_split_qkv_input) != before[0]:
            bridge.set_use_split_qkv_input(before[0])


def capture(bridge: Any, tokens: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """Run the bridge once on `tokens` (batch, pos) and return each named activation, detached.

    No BOS is added: `tokens` are used as given (prompt sets already carry their BOS).
    """
    store: dict[str, Tensor] = {}

    def keep(name: str) -> HookFn:
        def fn(act: Tensor, hook: Any = None) -> None:
            store[name] = act.detach().clone()
        return fn

    with torch.no_grad(), hooks(bridge, [(n, keep(n)) for n in names]):
        bridge(tokens)
    missing = [n for n in names if n not in store]
    if missing:
        raise WorkbenchError(f"hook point {missing[0]} did not fire during the forward pass")
    return store


def parse_hook_name(name: str) -> tuple[Site, int | None] | None:
    """`blocks.3.hook_attn_out` -> (Site.ATTN_OUT, 3); None for a name that is not a Site
    (dictionary files name their hook points this way)."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        site = next((s for s in Site if s.value == parts[2] and s not in ROOT_SITES), None)
        return None if site is None else (site, int(parts[1]))
    site = next((s for s in ROOT_SITES if s.value == name), None)
    return None if site is None else (site, None)


def _site_of(name: str) -> Site:
    tail = name.split(".", 2)[2] if name.startswith("blocks.") else name
    return next((s for s in Site if s.value == tail), Site.EMBED)
