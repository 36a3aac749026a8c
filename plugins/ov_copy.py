"""OV and QK circuit scores on digit tokens (`run ov_copy`): copying, incrementing, matching.

Digits are the tokens `'0'..'9'` or `' 0'..' 9'`, whichever are single tokens (with both, the
ones the prompt set's answers use). For each head (folded weights, LayerNorms as plain `ln`):

1. Embed digit t: `x_t = W_E[t]` (`embed=mlp0`: plus MLP 0's output on it, GPT-2's effective
   embedding) and normalise, `h_t = ln(x_t)`.
2. OV: the head's output if it attended only to t is `h_t @ W_OV` (`W_OV = W_V @ W_O`); its
   direct logits are `centre(h_t @ W_OV) @ W_U` (the final LayerNorm centres; its scale does not
   change ranks; biases left out).
3. `copy`: the fraction of digits t whose own token is within the `top_k` logits (over the
   vocabulary, or over the digits with `among=digits`). `successor`: the same for t -> t + 1
   (t = 0..8).
4. `qk`: the query-key affinity `(h_t @ W_Q) . (h_s @ W_K) / sqrt(d_head)` of digit pairs; the
   score is its mean on the diagonal (t attends to t) minus its mean off it (position
   embeddings and biases left out).
5. `head=a1.2`: the SVD of that head's `W_OV`; a Table with one row per top singular direction
   (`n_dirs`), labelled with its singular value and the tokens that read into it and that it
   writes most; columns are how much each digit reads into it (`in:'3'`) and the logit it writes
   on each digit (`out:'3'`).

Returns NodeScores (one per head; copy/successor in [0, 1]) or a Table. Cost: 0 FE (weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.engine.api import Weights, ln
from workbench.errors import WorkbenchError
from workbench.graph import parse_node
from workbench.plugins import Context, NodeScores, Table, Technique

PLAIN = tuple(str(d) for d in range(10))
SPACED = tuple(f" {d}" for d in range(10))


@dataclass(frozen=True)
class Params:
    score: Literal["copy", "successor", "qk"] = "copy"
    top_k: int = 1  # copy/successor: the target must be within this many top logits
    among: Literal["vocab", "digits"] = "vocab"  # rank over the vocabulary or the digits only
    head: str | None = None  # e.g. a1.2: the SVD of that head's W_OV as a Table
    n_dirs: int = 4  # with head: how many singular directions
    digits: Literal["auto", "plain", "spaced"] = "auto"  # '0'..'9' or ' 0'..' 9'
    embed: Literal["raw", "mlp0"] = "raw"  # token embedding alone, or plus MLP 0's output


def run(ctx: Context, params: Params) -> NodeScores | Table:
    w = ctx.api.weights
    if params.top_k < 1:
        raise WorkbenchError(f"top_k={params.top_k}: must be at least 1")
    ids, texts = digit_tokens(ctx.model.tokenizer, ctx.api.enc.answer, params.digits)
    digits = torch.tensor(ids, device=w.W_E.device)
    h = ln(_embed(w, digits, params.embed), w.eps)  # (10, d_model)
    if params.head is not None:
        return _svd_table(w, params, h, digits, texts, ctx.model.tokenizer,
                          ctx.graph.check(parse_node(params.head)))
    scores: dict[str, float] = {}
    for layer in range(w.n_layers):
        ctx.check()
        if params.score == "qk":
            q = torch.einsum("td,hde->hte", h, w.W_Q[layer])
            k = torch.einsum("sd,hde->hse", h, w.W_K[layer])
            aff = q @ k.transpose(1, 2) / w.d_head**0.5  # (head, 10, 10)
            eye = torch.eye(len(ids), dtype=torch.bool, device=aff.device)
            values = aff[:, eye].mean(-1) - aff[:, ~eye].mean(-1)
        else:
            # h @ W_V @ W_O one head at a time through d_head: W_OV (d_model^2 per head,
            # 12 GB at GPT-2 XL) and W_U (vocab x d_model) are never made
            v = torch.einsum("td,hde->hte", h, w.W_V[layer])
            out = torch.einsum("hte,hed->htd", v, w.W_O[layer])  # (head, 10, d_model)
            logits = direct_logits(w, out - out.mean(-1, keepdim=True))  # (head, 10, vocab)
            if params.among == "digits":
                logits = logits[..., digits]
                targets = torch.arange(len(ids), device=logits.device)
            else:
                targets = digits
            src = slice(None) if params.score == "copy" else slice(0, len(ids) - 1)
            tgt = targets if params.score == "copy" else targets[1:]
            chosen = logits[:, src]  # (head, n, vocab)
            own = chosen.gather(-1, tgt[None, :, None].expand(chosen.shape[0], -1, 1))
            rank = (chosen > own).sum(-1)  # (head, n): tokens strictly above the target
            values = (rank < params.top_k).float().mean(-1)
        for head, value in enumerate(values.tolist()):
            scores[f"a{layer}.{head}"] = value
    what = {"copy": f"own digit in the top {params.top_k}",
            "successor": f"digit + 1 in the top {params.top_k}",
            "qk": "self minus other query-key affinity"}[params.score]
    where = "" if params.score == "qk" else f" of the {params.among}"
    return NodeScores(title=f"OV/QK {params.score} score: {what}{where}", scores=scores,
                      unit="attn score" if params.score == "qk" else "fraction of digits")


def digit_tokens(tokenizer: Any, answers: Tensor, choice: str = "auto"
                 ) -> tuple[list[int], tuple[str, ...]]:
    """The ten digit token ids and their texts: plain or spaced, whichever are single tokens
    (`auto` with both: the set the answers use more, plain on a tie)."""
    found: dict[str, list[int]] = {}
    for name, texts in (("plain", PLAIN), ("spaced", SPACED)):
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        if all(len(i) == 1 for i in ids):
            found[name] = [i[0] for i in ids]
    if choice != "auto":
        if choice not in found:
            raise WorkbenchError(f"digits={choice}: those digits are not single tokens here")
        pick = choice
    elif not found:
        raise WorkbenchError("this tokenizer has no single-token digits '0'..'9' or ' 0'..' 9'")
    else:
        used = {name: int(torch.isin(answers, torch.tensor(ids, device=answers.device)).sum())
                for name, ids in found.items()}
        pick = max(found, key=lambda name: (used[name], name == "plain"))
    return found[pick], PLAIN if pick == "plain" else SPACED


def direct_logits(w: Weights, x: Tensor) -> Tensor:
    """x @ W_U for residual-space vectors x (..., d_model), biases left out: the centred
    unembedding without making W_U."""
    return w.unembed(x) - w.b_U


def _embed(w: Weights, tokens: Tensor, embed: str) -> Tensor:
    """(n,) ids -> (n, d_model): the token embedding, plus MLP 0's output with `mlp0`."""
    x = w.W_E[tokens]
    if embed == "mlp0":
        x = x + w.act(ln(x, w.eps) @ w.W_in[0] + w.b_in[0]) @ w.W_out[0] + w.b_out[0]
    return x


def _svd_table(w: Weights, params: Params, h: Tensor, digits: Tensor, texts: tuple[str, ...],
               tokenizer: Any, node: Any) -> Table:
    if node.kind != "attn" or node.port is not None or node.pos is not None:
        raise WorkbenchError(f"head={params.head}: name an attention head, like a1.2")
    # (d_model, d_model) in float32: torch has no half precision SVD
    W_OV = w.W_V[node.layer, node.index].float() @ w.W_O[node.layer, node.index].float()
    U, S, Vh = torch.linalg.svd(W_OV)  # x @ W_OV = sum_i (x . U[:, i]) S[i] Vh[i]
    n = max(1, min(params.n_dirs, w.d_head))
    out_dir = Vh[:n] - Vh[:n].mean(-1, keepdim=True)  # the final LayerNorm centres
    reads = h.float() @ U[:, :n]  # (10, n) how much each digit reads into direction i
    writes = direct_logits(w, out_dir.to(w.dtype))  # (n, vocab)
    # Singular vectors have no sign: make each direction's largest digit logit positive.
    on_digits = writes[:, digits]
    sign = on_digits.gather(1, on_digits.abs().argmax(1, keepdim=True)).sign()
    sign[sign == 0] = 1
    reads, writes = reads * sign.T, writes * sign
    all_reads = (ln(w.W_E, w.eps) @ U[:, :n].to(w.dtype)).float() * sign.T  # (vocab, n)

    def top(values: Tensor) -> str:
        ids = values.topk(min(3, values.numel())).indices.tolist()
        return ",".join(repr(tokenizer.decode([i])) for i in ids)

    rows = tuple(f"dir{i} s={float(S[i]):.3g} {top(all_reads[:, i])}->{top(writes[i])}"
                 for i in range(n))
    cols = tuple(f"in:{t!r}" for t in texts) + tuple(f"out:{t!r}" for t in texts)
    values = torch.cat([reads.T, writes[:, digits]], dim=1)  # (n, 20)
    return Table(title=f"top singular directions of {node}'s W_OV (digits read / written)",
                 rows=rows, cols=cols, values=values.cpu(), unit="projection / logit")


TECHNIQUE = Technique(
    name="ov_copy", title="OV copy, successor and QK scores", Params=Params, run=run,
    cost="0 FE (weights only)",
)
