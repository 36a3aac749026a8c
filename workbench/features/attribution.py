"""Hierarchical attribution in the feature basis (Ge et al. 2024) on the replacement model.

With attention patterns, LayerNorm scales and each feature's active set frozen at the clean
run, the replacement model is linear in its nodes: feature activations at positions, one
error term per site and position, and the input embeddings (`trace` gives their values).
A node's attribution to the target T is value * dT/dvalue. The backward runs writer by
writer from the top (m_L, a_L, m_{L-1}, ...): at each step the nodes' attributions are
read off, nodes under `threshold` (or outside the step's `top`) are detached -- the gradient
does not flow on through them -- and the rest carry it down through their encoders and the
frozen heads' OV circuits (`_attention_back`). Error nodes are leaves.

Target: `metric` (the logit difference, averaged like the metric) or a feature at a
position (`m1.f5@-1`: its activation, averaged over prompts). Edges from node s to node t
are s's direct effect on t (through the residual and frozen heads, never through another
feature) times dT/dt, so all edges into t plus t's constants sum to t's own attribution.

Names: features `m0.f12@3`; site `m0`'s error node at position 3 is `m0.f{d_sae}@3` (one
past the last feature); embeddings `input@3`. Positions are 0..n_pos-1.

Invariant (tested in float64): with nothing detached each node's attribution equals the
exact change of T in the frozen model when that node is removed; with detaching, the
change when it is removed and the detached nodes are held at their values (`frozen_target`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.features.replacement import DictionarySet, Trace
from workbench.graph import parse_node
from workbench.tasks.encode import EncodedPrompts
from workbench.weights import Weights


@dataclass(frozen=True)
class Target:
    """`metric` (key None) or feature `index` of site `key` at position `pos`."""

    key: str | None = None
    index: int = 0
    pos: int = 0

    def name(self) -> str:
        return "logits" if self.key is None else f"{self.key}.f{self.index}@{self.pos}"


def parse_target(text: str, dicts: DictionarySet, n_pos: int) -> Target:
    if text in ("metric", "logit_diff", "logits"):
        return Target()
    node = parse_node(text)
    if node.kind != "feature" or node.pos is None:
        raise WorkbenchError(f"target={text}: give metric or a feature at a position, like "
                             "m0.f12@-1")
    key = f"{node.site}{node.layer}"
    d = dicts.get(key)
    if d is None:
        raise WorkbenchError(f"target={text}: no dictionary on {key} (sae load one)")
    if not 0 <= node.index < d.d_sae:
        raise WorkbenchError(f"target={text}: {key} has features 0..{d.d_sae - 1}")
    if not -n_pos <= node.pos < n_pos:
        raise WorkbenchError(f"target={text}: positions are 0..{n_pos - 1} or -1..-{n_pos}")
    return Target(key, node.index, node.pos % n_pos)


@dataclass(frozen=True)
class QK:
    """One attention-pattern entry (head `a1.2`, query position `q`, key position `k`):
    `weight`, the sum over prompts of |its share of T through the frozen OV path|; `score`,
    its mean attention score (before softmax); and each upstream node's share of that score
    through the query side and through the key side (the other side held), mean over
    prompts. Shares plus the bias terms sum to the score (it is bilinear)."""

    head: str
    q: int
    k: int
    weight: float
    score: float
    query: dict[str, float]
    key: dict[str, float]


@dataclass(frozen=True)
class Attribution:
    """Node scores (name -> attribution, zero ones left out), the detached-or-kept flag per
    node, the target's value, and edges (src, dst) -> weight among the kept nodes."""

    target: Target
    value: float
    scores: dict[str, float]
    kept: frozenset[str]
    edges: dict[tuple[str, str], float]
    mass: dict[str, float]  # sum over prompts of |attribution|: what ranking uses
    qk: tuple[QK, ...] = ()  # attention-score attribution of the strongest pattern entries


def stages(w: Weights, dicts: DictionarySet) -> list[str]:
    """Writers from the top: m_{n-1}, a_{n-1}, ..., m0, a0 (then the input)."""
    out = []
    for layer in reversed(range(w.n_layers)):
        d = dicts.get(f"m{layer}")
        if d is None or not d.transcoder:
            what = "an mlp_out SAE" if d is not None else "no dictionary"
            raise WorkbenchError(f"feature_attr needs a transcoder for every MLP; m{layer} has "
                                 f"{what} (sae load a transcoder for it)")
        out += [f"m{layer}", f"a{layer}"]
    return out


@dataclass(frozen=True)
class _Active:
    """The active features of one site at each (prompt, position), padded to the largest
    count L with zero activations: values and feature indices (b, p, L)."""

    val: Tensor
    idx: Tensor


def _active(f: Tensor) -> _Active:
    """From the nonzeros directly (O(active), no top-k over every feature)."""
    b, p, n = f.shape
    flat = f.reshape(b * p, n)
    rows, cols = (flat > 0).nonzero().unbind(1)
    counts = torch.bincount(rows, minlength=b * p)
    width = max(1, int(counts.max())) if rows.numel() else 1
    slot = torch.arange(rows.numel(), device=f.device) - (counts.cumsum(0) - counts)[rows]
    idx = torch.zeros(b * p, width, dtype=torch.long, device=f.device)
    val = torch.zeros(b * p, width, dtype=f.dtype, device=f.device)
    idx[rows, slot], val[rows, slot] = cols, flat[rows, cols]
    return _Active(val.view(b, p, width), idx.view(b, p, width))


def _dots(act: _Active, g: Tensor, w_dec: Tensor) -> Tensor:
    """g (..., b, p, d) dotted with each active feature's decoder row -> (..., b, p, L)."""
    return torch.einsum("...bpd,bpld->...bpl", g, w_dec[act.idx])


def _scatter(act: _Active, x: Tensor, n: int) -> Tensor:
    """Per-active values x (..., b, p, L) -> (..., p, n) summed over prompts."""
    lead = x.shape[:-3]
    b, p, L = act.idx.shape
    out = x.new_zeros(*lead, p, n)
    flat = x.movedim(-3, -2).reshape(*lead, p, b * L)
    index = act.idx.permute(1, 0, 2).reshape(p, b * L).expand(*lead, p, b * L)
    return out.scatter_add_(-1, index.contiguous(), flat)


def _scale(x: Tensor, eps: float) -> Tensor:
    c = x - x.mean(-1, keepdim=True)
    return (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _ln_back(g: Tensor, scale: Tensor) -> Tensor:
    """Gradient through the folded LayerNorm with its scale frozen: (g - mean g) / scale."""
    return (g - g.mean(-1, keepdim=True)) / scale


def _attention_back(w: Weights, tr: Trace, layer: int, g: Tensor) -> Tensor:
    """d(attention output)/d(resid_pre) transposed, frozen patterns and scale; g is
    (..., batch, pos, d) with any leading axes."""
    p = tr.pattern[layer]  # (b, h, q, k)
    gz = torch.einsum("...bqd,hed->...bqhe", g, w.W_O[layer])
    gv = torch.einsum("bhqk,...bqhe->...bkhe", p, gz)
    g_ln = torch.einsum("...bkhe,hde->...bkd", gv, w.W_V[layer])
    return _ln_back(g_ln, _scale(tr.resid_pre[layer], w.eps))


def metric_seed(w: Weights, tr: Trace, enc: EncodedPrompts) -> Tensor:
    """dT/d(final residual) (batch, pos, d) for T = the mean logit difference."""
    assert tr.final is not None
    direction = w.unembed_dirs(enc.answer) - w.unembed_dirs(enc.contrast)  # (b, n_ans, d)
    weight = (enc.answer != enc.contrast).to(direction.dtype)
    weight = weight / weight.sum(-1, keepdim=True).clamp(min=1) / enc.n
    at = enc.answer_pos
    final = tr.final.gather(1, at.unsqueeze(-1).expand(-1, -1, tr.final.shape[-1]))
    g_ans = _ln_back(direction * weight.unsqueeze(-1), _scale(final, w.eps))
    g = torch.zeros_like(tr.final)
    g.scatter_add_(1, at.unsqueeze(-1).expand_as(g_ans), g_ans)
    return g


def metric_value(w: Weights, tr: Trace, enc: EncodedPrompts) -> float:
    from workbench.features.replacement import logits
    from workbench.metrics import logit_diff_per_prompt

    return float(logit_diff_per_prompt(logits(w, tr, enc.answer_pos), enc).mean())


def feature_seed(w: Weights, tr: Trace, dicts: DictionarySet, t: Target,
                 coef: Tensor | None = None) -> tuple[Tensor, int]:
    """dT/d(residual) just below the target's reader (batch, pos, d) and the index of the
    first stage under it. `coef` (batch,) scales each prompt (default 1 / n: the mean)."""
    assert t.key is not None
    d = dicts.get(t.key)
    assert d is not None
    f = tr.feats[t.key][:, t.pos, t.index]
    b = f.shape[0]
    c = (f > 0).to(f.dtype) * (coef if coef is not None else 1.0 / b)
    g = torch.zeros_like(tr.embed)
    g[:, t.pos] = c[:, None] * d.W_enc[:, t.index]
    layer = int(t.key[1:])
    order = stages(w, dicts)
    if t.key[0] == "m":
        if not d.pre_ln:
            g = _ln_back(g, _scale(tr.resid_mid[layer], w.eps))
        return g, order.index(f"a{layer}")
    g = _attention_back(w, tr, layer, g)
    return g, order.index(f"a{layer}") + 1


def feature_value(tr: Trace, t: Target) -> float:
    assert t.key is not None
    return float(tr.feats[t.key][:, t.pos, t.index].mean())


def _keep(attr: Tensor, threshold: float, top: int | None) -> Tensor:
    keep = attr.abs() >= threshold if threshold > 0 else attr != 0
    if top is not None and top < int(keep.sum()):
        flat = attr.abs().flatten()
        order = flat.argsort(descending=True)[:top]
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order] = True
        keep = keep.view_as(attr) & (attr != 0)
    return keep


def attribute(w: Weights, tr: Trace, dicts: DictionarySet, enc: EncodedPrompts,
              target: Target, threshold: float = 0.0, top: int | None = None,
              edge_nodes: int = 0, rank: str = "mass", qk: int = 0) -> Attribution:
    """Hierarchical attribution of `target`; edges among the `edge_nodes` largest kept
    nodes, the target and the input (0 = no edges). `rank` decides what `threshold` and
    `top` compare: `mass` (the sum over prompts of |attribution|: a node that matters in
    some prompts, whatever its sign elsewhere) or `sum` (|attribution| itself)."""
    if rank not in ("mass", "sum"):
        raise WorkbenchError(f"rank={rank}: choose mass or sum")
    order = stages(w, dicts)
    if target.key is None:
        g, first, value = metric_seed(w, tr, enc), 0, metric_value(w, tr, enc)
    else:
        g, first = feature_seed(w, tr, dicts, target)
        value = feature_value(tr, target)
    scores: dict[str, float] = {}
    mass: dict[str, float] = {}
    kept: set[str] = set()
    grads: dict[str, Tensor] = {}  # key -> dT/d(residual) above the site (b, p, d)
    actives: dict[str, _Active] = {}
    g_attn: dict[int, Tensor] = {}  # layer -> dT/d(true attention output), kept paths
    for key in order[first:]:
        d = dicts.get(key)
        layer = int(key[1:])
        if d is None:  # attention without an SAE: the heads' output passes straight on
            g_attn[layer] = g
            g = g + _attention_back(w, tr, layer, g)
            continue
        act = actives[key] = _active(tr.feats[key])
        per = _dots(act, g, d.W_dec) * act.val  # (b, p, L): each active feature's share
        attr, absolute = _scatter(act, per, d.d_sae), _scatter(act, per.abs(), d.d_sae)
        err_per = (tr.errors[key] * g).sum(-1)  # (b, p)
        err = err_per.sum(0)
        keep = _keep(absolute if rank == "mass" else attr, threshold, top) & (absolute > 0)
        _record(scores, mass, kept, key, d.d_sae, attr, absolute, err, err_per.abs().sum(0),
                keep)
        grads[key] = g
        # on through the kept active features: df/dpre = 1 where active (f = pre there)
        kept_at = keep.to(per.dtype).expand(act.idx.shape[0], -1, -1).gather(-1, act.idx)
        coef = _dots(act, g, d.W_dec) * (act.val > 0).to(per.dtype) * kept_at
        g_x = torch.einsum("bpl,bpld->bpd", coef, d.W_enc.T[act.idx])
        if key[0] == "m":
            g = g + (g_x if d.pre_ln else _ln_back(g_x, _scale(tr.resid_mid[layer], w.eps)))
        else:
            g_attn[layer] = g_x
            g = g + _attention_back(w, tr, layer, g_x)
    emb_per = (tr.embed * g).sum(-1)
    for p, (v, a) in enumerate(zip(emb_per.sum(0).tolist(), emb_per.abs().sum(0).tolist(),
                                   strict=True)):
        if a != 0:
            scores[f"input@{p}"], mass[f"input@{p}"] = v, a
            kept.add(f"input@{p}")
    ranking = mass if rank == "mass" else {k: abs(v) for k, v in scores.items()}
    edges = _edges(w, tr, dicts, enc, target, ranking, kept, grads, actives, order,
                   edge_nodes) if edge_nodes > 0 else {}
    pairs = qk_attribution(w, tr, dicts, g_attn, qk) if qk > 0 else ()
    return Attribution(target, value, scores, frozenset(kept), edges, ranking, pairs)


def _record(scores: dict[str, float], mass: dict[str, float], kept: set[str], key: str,
            d_sae: int, attr: Tensor, absolute: Tensor, err: Tensor, err_abs: Tensor,
            keep: Tensor) -> None:
    live = absolute != 0
    for (p, i), v, a, k in zip(live.nonzero().tolist(), attr[live].tolist(),
                               absolute[live].tolist(), keep[live].tolist(), strict=True):
        name = f"{key}.f{i}@{p}"
        scores[name], mass[name] = v, a
        if k:
            kept.add(name)
    for p, (v, a) in enumerate(zip(err.tolist(), err_abs.tolist(), strict=True)):
        if a != 0:
            name = f"{key}.f{d_sae}@{p}"
            scores[name], mass[name] = v, a
            kept.add(name)  # error nodes are leaves: nothing flows through them anyway


def _edges(w: Weights, tr: Trace, dicts: DictionarySet, enc: EncodedPrompts, target: Target,
           scores: dict[str, float], kept: set[str], grads: dict[str, Tensor],
           actives: dict[str, _Active], order: list[str], n: int
           ) -> dict[tuple[str, str], float]:
    """Direct effects s -> t times dT/dt, for t among the n kept feature nodes ranked first
    by `scores` (larger first) and the target; s any kept node below t."""
    feats = [k for k in kept if ".f" in k and _is_feature(k, dicts)]
    chosen = sorted(feats, key=lambda k: (-scores[k], k))[:n]
    out: dict[tuple[str, str], float] = {}
    seeds: list[tuple[str, Tensor, int]] = []
    if target.key is None:
        seeds.append(("logits", metric_seed(w, tr, enc), 0))
    else:
        g, first = feature_seed(w, tr, dicts, target)
        seeds.append((target.name(), g, first))
    for name in chosen:
        node = parse_node(name)
        key = f"{node.site}{node.layer}"
        assert node.pos is not None
        d = dicts.get(key)
        assert d is not None
        u = grads[key][:, node.pos] @ d.W_dec[node.index]  # dT/df_t per prompt
        g, first = feature_seed(w, tr, dicts, Target(key, node.index, node.pos), coef=u)
        seeds.append((name, g, first))
    by_first: dict[int, list[tuple[str, Tensor]]] = {}
    for dst, g, first in seeds:
        by_first.setdefault(first, []).append((dst, g))
    for first, group in sorted(by_first.items()):
        for at in range(0, len(group), EDGE_CHUNK):
            chunk = group[at: at + EDGE_CHUNK]
            _direct(w, tr, dicts, actives, order[first:], [d for d, _ in chunk],
                    torch.stack([g for _, g in chunk]), kept, out)
    return out


EDGE_CHUNK = 8  # edge seeds propagated together (memory: chunk x batch x pos x d_sae)


def _direct(w: Weights, tr: Trace, dicts: DictionarySet, actives: dict[str, _Active],
            below: list[str], dsts: list[str], g: Tensor, kept: set[str],
            out: dict[tuple[str, str], float]) -> None:
    """Propagate seeds g (K, b, p, d) down the direct paths (residual, frozen heads without
    an SAE; never through a feature) and record each kept source's edge into each dst."""
    for key in below:
        d = dicts.get(key)
        layer = int(key[1:])
        if d is None:
            g = g + _attention_back(w, tr, layer, g)
            continue
        act = actives.get(key) or _active(tr.feats[key])
        attr = _scatter(act, _dots(act, g, d.W_dec) * act.val, d.d_sae)  # (K, p, d_sae)
        err = torch.einsum("bpd,kbpd->kp", tr.errors[key], g)
        for k, dst in enumerate(dsts):
            for p, i in attr[k].nonzero().tolist():
                src = f"{key}.f{i}@{p}"
                if src in kept:
                    out[(src, dst)] = float(attr[k, p, i])
            for p, v in enumerate(err[k].tolist()):
                if v != 0:
                    out[(f"{key}.f{d.d_sae}@{p}", dst)] = v
    emb = torch.einsum("bpd,kbpd->kp", tr.embed, g)
    for k, dst in enumerate(dsts):
        for p, v in enumerate(emb[k].tolist()):
            if v != 0:
                out[(f"input@{p}", dst)] = v


def _is_feature(name: str, dicts: DictionarySet) -> bool:
    node = parse_node(name)
    d = dicts.get(f"{node.site}{node.layer}")
    return d is not None and node.index < d.d_sae


QK_NODES = 8  # nodes kept per side of each QK entry


def qk_attribution(w: Weights, tr: Trace, dicts: DictionarySet, g_attn: dict[int, Tensor],
                   n: int) -> tuple[QK, ...]:
    """The `n` pattern entries of each attention layer carrying most of T through the
    frozen heads, each with its score attributed to the nodes writing at its query and its
    key position; strongest first."""
    cands = []
    for layer, ga in g_attn.items():
        h = (tr.resid_pre[layer] - tr.resid_pre[layer].mean(-1, keepdim=True)) / _scale(
            tr.resid_pre[layer], w.eps)
        v = torch.einsum("bpd,hde->bphe", h, w.W_V[layer]) + w.b_V[layer]
        gz = torch.einsum("bqd,hed->bqhe", ga, w.W_O[layer])
        share = tr.pattern[layer] * torch.einsum("bqhe,bkhe->bhqk", gz, v)
        mass = share.abs().sum(0)  # (head, q, k)
        flat = mass.flatten()
        top = flat.topk(min(n, flat.numel())).indices.tolist()
        hh, qq, kk = mass.shape
        cands += [(float(flat[i]), layer, i // (qq * kk), (i // kk) % qq, i % kk) for i in top]
    cands.sort(key=lambda c: -c[0])
    out = []
    for weight, layer, head, q, k in cands:
        x = tr.resid_pre[layer]
        scale = _scale(x, w.eps)
        ln_x = (x - x.mean(-1, keepdim=True)) / scale
        qv = ln_x[:, q] @ w.W_Q[layer, head] + w.b_Q[layer, head]  # (b, e)
        kv = ln_x[:, k] @ w.W_K[layer, head] + w.b_K[layer, head]
        root = w.d_head ** 0.5
        score = float(((qv * kv).sum(-1) / root).mean())
        r_q = (kv @ w.W_Q[layer, head].T) / (scale[:, q] * root)  # (b, d): d score / d write
        r_k = (qv @ w.W_K[layer, head].T) / (scale[:, k] * root)
        sides = {}
        for side, pos, r in (("query", q, r_q), ("key", k, r_k)):
            r = r - r.mean(-1, keepdim=True)  # the LayerNorm centres each write
            sides[side] = _writers_at(tr, dicts, layer, pos, r)
        out.append(QK(f"a{layer}.{head}", q, k, weight, score, sides["query"], sides["key"]))
    return tuple(out)


def _writers_at(tr: Trace, dicts: DictionarySet, layer: int, pos: int, r: Tensor
                ) -> dict[str, float]:
    """Mean over prompts of each node's write at `pos` into resid_pre[layer], dotted with r
    (b, d); the QK_NODES largest by magnitude."""
    shares: dict[str, float] = {f"input@{pos}": float((tr.embed[:, pos] * r).sum(-1).mean())}
    for d in dicts.ordered():
        if d.layer >= layer:
            continue
        f = tr.feats[d.key][:, pos]  # (b, d_sae)
        per = (f * (r @ d.W_dec.T)).mean(0)
        for i in per.nonzero().flatten().tolist():
            shares[f"{d.key}.f{i}@{pos}"] = float(per[i])
        shares[f"{d.key}.f{d.d_sae}@{pos}"] = float((tr.errors[d.key][:, pos] * r).sum(-1)
                                                     .mean())
    best = sorted(shares.items(), key=lambda kv: -abs(kv[1]))[:QK_NODES]
    return dict(best)


# -- the frozen linear model (the reference the tests check attributions against) ----------


def frozen_target(w: Weights, tr: Trace, dicts: DictionarySet, enc: EncodedPrompts,
                  target: Target, remove: Iterable[str] = (), hold: Iterable[str] = ()
                  ) -> float:
    """T in the frozen replacement model with nodes `remove`d (set to 0) and nodes `hold`
    at their clean values whatever their inputs do."""
    remove, hold = set(remove), set(hold)

    def node_mask(key: str, d_sae: int, n_pos: int, names: set[str]) -> Tensor:
        m = torch.zeros(n_pos, d_sae + 1, dtype=torch.bool)
        for name in names:
            if name.startswith(f"{key}.f"):
                node = parse_node(name)
                assert node.pos is not None
                m[node.pos, node.index] = True
        return m

    n_pos = tr.embed.shape[1]
    emb_off = torch.ones(n_pos, 1, dtype=tr.embed.dtype)
    for name in remove:
        if name.startswith("input@"):
            emb_off[int(name[6:])] = 0
    resid = tr.embed * emb_off
    feats: dict[str, Tensor] = {}

    def apply(key: str, pre_or_none: Tensor) -> Tensor:
        d = dicts.get(key)
        assert d is not None
        clean = tr.feats[key]
        f = pre_or_none * (clean > 0).to(clean.dtype)
        rm, hd = node_mask(key, d.d_sae, n_pos, remove), node_mask(key, d.d_sae, n_pos, hold)
        f = torch.where(hd[:, :-1], clean, f)
        f = f.masked_fill(rm[:, :-1], 0.0)
        feats[key] = f
        err = tr.errors[key].masked_fill(rm[:, -1:], 0.0)
        return f @ d.W_dec + d.b_dec + err

    for layer in range(w.n_layers):
        x = resid
        h = (x - x.mean(-1, keepdim=True)) / _scale(tr.resid_pre[layer], w.eps)
        v = torch.einsum("bpd,hde->bphe", h, w.W_V[layer]) + w.b_V[layer]
        z = torch.einsum("bhqk,bkhe->bqhe", tr.pattern[layer], v)
        attn = torch.einsum("bqhe,hed->bqd", z, w.W_O[layer]) + w.b_O[layer]
        key = f"a{layer}"
        d = dicts.get(key)
        if d is not None and target.key == key:
            f = d.pre(attn) * (tr.feats[key] > 0).to(attn.dtype)
            return float(f[:, target.pos, target.index].mean())
        if d is not None:
            attn = apply(key, d.pre(attn))
        mid = resid + attn
        key = f"m{layer}"
        d = dicts.get(key)
        assert d is not None and d.transcoder
        xin = mid if d.pre_ln else (mid - mid.mean(-1, keepdim=True)) / _scale(
            tr.resid_mid[layer], w.eps)
        if target.key == key:
            f = d.pre(xin) * (tr.feats[key] > 0).to(xin.dtype)
            return float(f[:, target.pos, target.index].mean())
        resid = mid + apply(key, d.pre(xin))
    assert tr.final is not None
    at = enc.answer_pos
    final = resid.gather(1, at.unsqueeze(-1).expand(-1, -1, resid.shape[-1]))
    clean_final = tr.final.gather(1, at.unsqueeze(-1).expand(-1, -1, resid.shape[-1]))
    h = (final - final.mean(-1, keepdim=True)) / _scale(clean_final, w.eps)
    lg = w.unembed(h)
    from workbench.metrics import logit_diff_per_prompt

    return float(logit_diff_per_prompt(lg, enc).mean())
