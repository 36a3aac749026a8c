"""`workbench train-sae`: train an SAE on one site or a transcoder for one MLP.

Activations are streamed: every step draws fresh prompts from the task's train split (or
the next lines of a text file), runs the engine's fused forward once and takes the site's
vectors at every real (unpadded) position. Activation spaces are `dictionary.py`'s.

1. Sparsity: `topk` (k largest pre-activations, ReLU), `relu` with an L1 penalty, or
   `jumprelu` (learned thresholds, straight-through L0 penalty, Rajamanoharan et al. 2024).
2. Decoder rows are renormalised to unit norm after every step (the decoder-norm constraint).
3. Dead features (none fired in the last `resample_every` steps) are resampled: the encoder
   column and decoder row point at a poorly reconstructed input, Adam state reset; "dead"
   here is active on under 1e-4 of the window's vectors.
4. Every `eval_every` steps (and at the end) the held-out prompt set gives L0, FVU, dead
   fraction and the replacement performance % (the component replaced by the dictionary,
   error dropped and kept) on the task's metric; rows go to `train_log.jsonl` and to wandb
   (offline unless the user configured it) when asked.

Deterministic on CPU from `seed` and `threads`. Ctrl-C (or `cancelled()`) stops after the
current step and saves what was trained, marked interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.features.dictionary import SITES, SPARSITIES, Dictionary
from workbench.features.files import save_saelens
from workbench.features.replacement import DictionarySet
from workbench.features.stats import evaluate
from workbench.forward import Forward
from workbench.model import LoadedModel, load_model
from workbench.tasks import make_task
from workbench.tasks.encode import EncodedPrompts, encode
from workbench.weights import Weights, ln

LOG = "train_log.jsonl"
DEAD_RATE = 1e-4  # resampled below this activation rate


@dataclass(frozen=True)
class SaeConfig:
    model: str = "add3"
    site: str = "attn_out"  # attn_out | mlp_out | resid_pre | mlp (with transcoder)
    layer: int = 0
    transcoder: bool = False
    task: str | None = None  # default: the model's own task
    task_options: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # a text file: one example per line, instead of a task
    d_sae: int = 256
    sparsity: str = "topk"
    k: int = 8
    l1: float = 3e-3  # relu: L1 coefficient; jumprelu: L0 coefficient
    steps: int = 2000
    batch: int = 64  # prompts per step
    lr: float = 2e-3
    seed: int = 0
    resample_every: int = 500
    eval_every: int = 500
    eval_n: int = 512
    threads: int = 1

    def check(self) -> None:
        if self.site not in SITES:
            raise WorkbenchError(f"--site {self.site}: choose {'|'.join(SITES)}")
        if (self.site == "mlp") != self.transcoder:
            raise WorkbenchError("a transcoder replaces an MLP: use --site mlp --transcoder "
                                 "(and --site attn_out|mlp_out|resid_pre for an SAE)")
        if self.sparsity not in SPARSITIES:
            raise WorkbenchError(f"--sparsity {self.sparsity}: choose {'|'.join(SPARSITIES)}")
        for name in ("d_sae", "steps", "batch", "eval_n", "resample_every", "eval_every", "k"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"--{name.replace('_', '-')} must be at least 1")
        if self.sparsity == "topk" and self.k > self.d_sae:
            raise WorkbenchError(f"--k {self.k} is larger than --d-sae {self.d_sae}")


@dataclass(frozen=True)
class SaeResult:
    dictionary: Dictionary
    stats: dict[str, float]
    steps: int
    seconds: float
    interrupted: bool


def command_line(cfg: SaeConfig, out: Path) -> str:
    """The `workbench train-sae` line that reproduces `cfg` (non-default flags only)."""
    default = SaeConfig()
    words = ["workbench train-sae", f"--model {cfg.model}", f"--site {cfg.site}",
             f"--layer {cfg.layer}"] + (["--transcoder"] if cfg.transcoder else [])
    for f in dataclasses.fields(SaeConfig):
        if f.name in ("model", "site", "layer", "transcoder", "task_options"):
            continue
        value = getattr(cfg, f.name)
        if value != getattr(default, f.name) or f.name in ("seed", "steps", "threads"):
            words.append(f"--{f.name.replace('_', '-')} {value}")
    words += [f"{k}={v}" for k, v in cfg.task_options.items()]
    return " ".join(words + [f"--out {out}"])


def site_vectors(w: Weights, cfg_site: str, layer: int, tokens: Tensor, lengths: Tensor,
                 forward: Forward | None = None) -> tuple[Tensor, Tensor]:
    """(input, target) vectors (n, d) of a site at every unpadded position of `tokens`."""
    forward = forward or Forward(w)
    answer_pos = torch.zeros(tokens.shape[0], 1, dtype=torch.long, device=tokens.device)
    with torch.no_grad():
        _, _, acts = forward.run(tokens, answer_pos, record=True)
    assert acts is not None
    if cfg_site == "attn_out":
        x = y = acts.resid_mid[layer] - acts.resid_pre[layer]
    elif cfg_site == "mlp_out":
        x = y = acts.mlp_out[layer]
    elif cfg_site == "resid_pre":
        x = y = acts.resid_pre[layer]
    else:
        x, y = ln(acts.resid_mid[layer], w.eps), acts.mlp_out[layer]
    valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
    return x[valid], y[valid]


class _Trainable(torch.nn.Module):
    def __init__(self, d_in: int, d_sae: int, x: Tensor, y: Tensor, sparsity: str, k: int
                 ) -> None:
        super().__init__()
        w_dec = torch.randn(d_sae, y.shape[1])
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(w_dec.T.clone() * (y.std() / x.std().clamp(min=1e-6))
                                        if x.shape[1] == y.shape[1] else
                                        torch.randn(d_in, d_sae) / math.sqrt(d_in))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(y.mean(0).clone())
        self.log_threshold = torch.nn.Parameter(torch.full((d_sae,), math.log(0.05)))
        self.sparsity, self.k = sparsity, k

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, activations, sparsity penalty per vector)."""
        pre = x @ self.W_enc + self.b_enc
        if self.sparsity == "topk":
            top = pre.topk(self.k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            penalty = torch.zeros(x.shape[0])
        elif self.sparsity == "relu":
            f = torch.relu(pre)
            penalty = f.sum(-1)
        else:
            theta = self.log_threshold.exp()
            f = _JumpReLU.apply(pre, theta)
            penalty = _Step.apply(pre, theta).sum(-1)
        return f @ self.W_dec + self.b_dec, f, penalty

    def export(self, site: str, layer: int, meta: dict[str, Any]) -> Dictionary:
        t = {n: p.detach().clone() for n, p in self.named_parameters()}
        return Dictionary(site=site, layer=layer, W_enc=t["W_enc"], b_enc=t["b_enc"],  # type: ignore[arg-type]
                          W_dec=t["W_dec"], b_dec=t["b_dec"], sparsity=self.sparsity,  # type: ignore[arg-type]
                          k=self.k if self.sparsity == "topk" else None,
                          threshold=t["log_threshold"].exp() if self.sparsity == "jumprelu"
                          else None, meta=meta)


_BANDWIDTH = 1e-3


class _JumpReLU(torch.autograd.Function):
    """pre * [pre > theta], with the straight-through gradient for theta (rectangle kernel)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < _BANDWIDTH / 2).to(pre.dtype) / _BANDWIDTH
        return grad * (pre > theta).to(pre.dtype), (-theta * near * grad).sum(0)


class _Step(torch.autograd.Function):
    """[pre > theta] (an L0 count), with the straight-through gradient for theta."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, theta: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, theta)
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        pre, theta = ctx.saved_tensors
        near = ((pre - theta).abs() < _BANDWIDTH / 2).to(pre.dtype) / _BANDWIDTH
        return None, (-near * grad).sum(0)


def _batches(cfg: SaeConfig, model: LoadedModel) -> Iterator[EncodedPrompts]:
    if cfg.text is None:
        name, opts = (cfg.task, cfg.task_options) if cfg.task else model.default_task()
        task = make_task(name, **{**opts, **cfg.task_options})
        step = 0
        while True:
            yield encode(task.pairs(cfg.batch, seed=cfg.seed * 1_000_003 + step, split="train"),
                         model.tokenizer)
            step += 1
    lines = [s for s in Path(cfg.text).read_text(encoding="utf-8").splitlines() if s.strip()]
    if not lines:
        raise WorkbenchError(f"{cfg.text}: no text lines to train on")
    n_ctx = int(model.card.n_ctx)
    at = 0
    while True:
        chunk = [lines[(at + i) % len(lines)] for i in range(cfg.batch)]
        at += cfg.batch
        ids = [model.tokenizer.encode(s, add_special_tokens=False)[: n_ctx] for s in chunk]
        lengths = torch.tensor([max(1, len(i)) for i in ids])
        tokens = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for r, i in enumerate(ids):
            tokens[r, : len(i)] = torch.tensor(i, dtype=torch.long)
        zero = torch.zeros(len(ids), 1, dtype=torch.long)
        yield EncodedPrompts(tokens, tokens, zero, zero, zero, (None,) * len(ids), lengths)


def train_sae(cfg: SaeConfig, out: Path | None = None,
              on_log: Callable[[dict[str, Any]], None] | None = None,
              cancelled: Callable[[], bool] = lambda: False, wandb: bool = False,
              model: LoadedModel | None = None) -> SaeResult:
    """Train one dictionary; save it under `out` in SAELens layout when given."""
    cfg.check()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = model or load_model(cfg.model)
    w = model.weights  # the one resident copy (a bridge would be a second)
    if not 0 <= cfg.layer < w.n_layers:
        raise WorkbenchError(f"--layer {cfg.layer}: the model has layers 0..{w.n_layers - 1}")
    forward = Forward(w)
    name, opts = (cfg.task, cfg.task_options) if cfg.task else model.default_task()
    held = make_task(name, **{**opts, **cfg.task_options}).prompt_set(
        cfg.eval_n, cfg.seed + 1, split="test")
    engine = AblationEngine(model, encode(held, model.tokenizer))
    batches = _batches(cfg, model)
    first = next(batches)
    x0, y0 = site_vectors(w, cfg.site, cfg.layer, first.clean, first.lengths, forward)
    net = _Trainable(x0.shape[1], cfg.d_sae, x0, y0, cfg.sparsity, cfg.k)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    seen = 0  # vectors since the last resampling
    rows: list[dict[str, Any]] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    log_file = (out / LOG).open("w") if out is not None else None
    run = _wandb(cfg, out) if wandb and out is not None else None

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        if log_file is not None:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
        if run is not None:
            run.log({k: v for k, v in row.items() if isinstance(v, int | float)},
                    step=row["step"])
        if on_log is not None:
            on_log(row)

    start, step, interrupted = time.perf_counter(), 0, False
    meta = {"train": {**dataclasses.asdict(cfg)}, "command": command_line(cfg, out or Path("."))}
    enc = first
    try:
        for step in range(1, cfg.steps + 1):
            x, y = site_vectors(w, cfg.site, cfg.layer, enc.clean, enc.lengths, forward)
            rec, f, penalty = net(x)
            var = (y - y.mean(0)).pow(2).sum(-1).mean()
            mse = (rec - y).pow(2).sum(-1).mean() / var
            loss = mse + (cfg.l1 * penalty.mean() if cfg.sparsity != "topk" else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            with torch.no_grad():
                net.W_dec.div_(net.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))
                fired += (f > 0).sum(0)
                seen += x.shape[0]
            if step % cfg.resample_every == 0 and step < cfg.steps:
                n_dead = _resample(net, opt, fired, seen, x, y, rec.detach())
                emit({"kind": "resample", "step": step, "dead": n_dead})
                fired.zero_()
                seen = 0
            if step % 50 == 0 or step == 1:
                emit({"kind": "train", "step": step, "of": cfg.steps, "loss": float(loss.detach()),
                      "fvu": float(mse.detach()), "l0": float((f > 0).float().sum(-1).mean())})
            if step % cfg.eval_every == 0 and step < cfg.steps:
                d = net.export(cfg.site, cfg.layer, {})
                emit({"kind": "eval", "step": step,
                      **_flat(evaluate(engine, DictionarySet((d,))))})
            if cancelled():
                interrupted = True
                break
            enc = next(batches)
    except KeyboardInterrupt:
        interrupted = True
    dictionary = net.export(cfg.site, cfg.layer, meta)
    stats = _flat(evaluate(engine, DictionarySet((dictionary,))))
    emit({"kind": "eval", "step": step, "final": True, **stats})
    seconds = time.perf_counter() - start
    dictionary = dataclasses.replace(dictionary, meta={**meta, "stats": stats, "steps": step,
                                                       "interrupted": interrupted})
    if out is not None:
        save_saelens(dictionary, out, model.identity.source)
    if log_file is not None:
        log_file.close()
    if run is not None:
        run.finish()
    return SaeResult(dictionary, stats, step, seconds, interrupted)


def _flat(stats: dict[str, Any]) -> dict[str, float]:
    """One dictionary's stats as a flat row: its L0 / FVU / dead plus the performances."""
    (site,) = stats["sites"].values()
    return {**site, **{k: v for k, v in stats.items() if k != "sites"}}


@torch.no_grad()
def _resample(net: _Trainable, opt: torch.optim.Optimizer, fired: Tensor, seen: int, x: Tensor,
              y: Tensor, rec: Tensor) -> int:
    """Point dead features (active on under 1 in DEAD_RATE of the window's vectors) at the
    worst-reconstructed vectors of the batch; reset their Adam state."""
    dead = (fired < seen * DEAD_RATE).nonzero().flatten()
    if dead.numel() == 0:
        return 0
    err = (y - rec).pow(2).sum(-1)
    pick = torch.multinomial(err / err.sum(), dead.numel(), replacement=True)
    direction = y[pick] - rec[pick]
    direction = direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-8)
    alive = (fired > 0).nonzero().flatten()
    enc_norm = net.W_enc[:, alive].norm(dim=0).mean() if alive.numel() else torch.tensor(1.0)
    src = x[pick] / x[pick].norm(dim=1, keepdim=True).clamp(min=1e-8)
    net.W_dec[dead] = direction
    net.W_enc[:, dead] = (src * enc_norm * 0.2).T
    net.b_enc[dead] = 0.0
    for p in (net.W_dec, net.W_enc, net.b_enc):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                if p is net.W_enc:
                    state[key][:, dead] = 0.0
                else:
                    state[key][dead] = 0.0
    return int(dead.numel())


def _wandb(cfg: SaeConfig, out: Path) -> Any:
    try:
        import wandb

        from workbench.finetune.tracking import wandb_mode

        mode = wandb_mode()
        return wandb.init(project="workbench-sae", name=out.name, dir=str(out),
                          config=dataclasses.asdict(cfg),
                          settings=wandb.Settings(quiet=True, console="off"),
                          **({"mode": mode} if mode else {}))
    except Exception:  # wandb raises many types; training goes on without it
        return None
