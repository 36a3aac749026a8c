"""The session: the only place state changes. TUI, replay and notebooks all call `execute`.

1. `execute(line)` parses a command (`workbench.commands`), runs its verb against the current
   `State` and returns an `Outcome` (data for display plus a JSON summary).
2. A verb that fails raises `WorkbenchError`; the state is left exactly as it was and the
   outcome carries the one-line error.
3. State is an immutable `State` value; state-changing verbs push the old value on the undo
   stack, so undo never reloads a model. Ablation engines (cached runs) are kept by identity
   for the last `ENGINES_KEPT` prompt sets of the current model; undo past them rebuilds one.
4. Every command is appended to the session log (JSON Lines, one appended line each) with its
   summary, a digest of it and the seconds taken: a crash loses nothing and the file replays.
5. An unexpected exception (a bug) is caught too: the state is put back, a crash report is
   written under the data folder, and the outcome's error is one line naming that file.
6. `save` and `export` write where `self.writes` allows (anywhere; only under the replay output
   folder; nowhere while a reopened session's recorded commands are re-run).

Invariant: nothing outside `execute` mutates the session; outcomes are JSON-safe summaries plus
the live result objects the TUI renders.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench import __version__, memory, settings
from workbench.ablation import Ablation, AblationEngine, Perf
from workbench.bounds import check_alphabet
from workbench.commands import Command, help_text, parse
from workbench.errors import WorkbenchError, crash_report
from workbench.export import export
from workbench.features.replacement import DictionarySet
from workbench.figures import CircuitFig, figure_of
from workbench.figures_mpl import save as save_figure
from workbench.files import Writes, write_atomic
from workbench.forward import Mode
from workbench.graph import Circuit, Edge, Graph, compare, expand, parse_edge
from workbench.metrics import BUILTIN_METRICS, Metric, as_metric, get_metric
from workbench.model import DEFAULT_MODEL, LoadedModel, load_model
from workbench.plugins import Cancelled, Context, Result, Technique, load_registry, select
from workbench.sessionlog import Entry, Header, SessionLog, digest_out, save_tensors
from workbench.tasks import PromptSet, make_task
from workbench.tasks.encode import EncodedPrompts, encode
from workbench.training import checkpoint_path

log = logging.getLogger(__name__)

# answer logits [, clean answer logits] -> (batch,) values; or a `Metric` (with a direction)
MetricFn = Callable[[Tensor, EncodedPrompts], Tensor] | Callable[
    [Tensor, EncodedPrompts, Tensor], Tensor] | Metric


@dataclass(frozen=True)
class NamedCircuit:
    circuit: Circuit
    level: str  # "node" (made from nodes) or "edge" (made from edge scores)


@dataclass(frozen=True)
class State:
    """Everything a command can change; an immutable value so undo is a pointer swap."""

    model: LoadedModel | None = None
    prompts: PromptSet | None = None
    metric: str = "logit_diff"
    mode: Mode = "mean"
    ablations: tuple[Ablation, ...] = ()
    results: tuple[tuple[str, Result], ...] = ()
    circuits: tuple[tuple[str, NamedCircuit], ...] = ()
    dictionaries: DictionarySet = DictionarySet()  # SAEs/transcoders attached by `sae load`
    made_by: tuple[tuple[str, str], ...] = ()  # result id -> "model dtype" that produced it
    n_results: int = 0  # r<n> ids count up and are not reused (except after undo)
    n_circuits: int = 0

    def result(self, rid: str) -> Result:
        found = dict(self.results).get(rid)
        if found is None:
            known = ", ".join(k for k, _ in self.results) or "none yet"
            raise WorkbenchError(f"no result {rid} (results: {known})")
        return found

    def circuit(self, cid: str) -> NamedCircuit:
        found = dict(self.circuits).get(cid)
        if found is None:
            known = ", ".join(k for k, _ in self.circuits) or "none yet"
            raise WorkbenchError(f"no circuit {cid} (circuits: {known})")
        return found


@dataclass(frozen=True)
class Outcome:
    """What one command did: `out` is the JSON summary, `result` the live object (if any)."""

    n: int
    cmd: str
    ok: bool
    out: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    digest: str | None = None
    seconds: float = 0.0
    result: Any = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"n": self.n, "cmd": self.cmd, "ok": self.ok}
        if self.ok:
            body["out"] = self.out
        else:
            body["error"] = self.error
        return body


ENGINES_KEPT = 3  # prompt sets whose cached runs stay resident (current model only)
UNDOABLE = {"load", "task", "prompts", "metric", "ablate", "restore", "run", "select", "sae"}


class Session:
    """A resident model, a prompt set and the investigation built on them."""

    def __init__(self, path: str | Path | None = None, model: LoadedModel | str | None = None,
                 metrics: dict[str, MetricFn] | None = None, seed: int = 0,
                 device: str = "auto", registry: dict[str, Technique] | None = None,
                 resume: bool = False) -> None:
        """`resume=True` extends the existing log at `path` (new lines after its own) instead
        of starting a new one; the caller re-runs its commands with `recording` off."""
        self.path = Path(path) if path is not None else None
        self.seed, self.device = seed, device
        self.state = State()
        self.undo_stack: list[State] = []
        self.redo_stack: list[State] = []
        self.outcomes: list[Outcome] = []
        self.metric_fns: dict[str, Metric] = {
            name: as_metric(name, fn) for name, fn in (metrics or {}).items()}
        self.registry = registry if registry is not None else load_registry()
        # (model, prompts, engine) by identity, most recently used last (see `engine`)
        self._engines: dict[tuple[int, int], tuple[Any, Any, AblationEngine]] = {}
        self._log = SessionLog(self.path) if self.path is not None else None
        self.writes = Writes()  # where save/export may write (replay and reopen narrow it)
        self.recording = True  # False while a reopened log's commands are re-run
        if isinstance(model, LoadedModel):
            self.state = replace(self.state, model=model)
        if not resume:
            self._start_log()
        if isinstance(model, str):
            outcome = self.execute(f"load {model}" + (f" device={device}"
                                                      if device != "auto" else ""))
            if not outcome.ok:
                raise WorkbenchError(outcome.error or "load failed")

    # -- the one entry point ---------------------------------------------------------------

    def execute(self, line: str | Command, progress: Callable[[float, str], None] | None = None,
                cancelled: Callable[[], bool] | None = None) -> Outcome:
        """Run one command line. Never raises for user errors: the outcome says what failed."""
        start = time.perf_counter()
        n = len(self.outcomes) + 1
        text = str(line).strip()
        before, stacks = self.state, (list(self.undo_stack), list(self.redo_stack))
        try:
            limit = settings.current().max_line
            if len(text) > limit:
                raise WorkbenchError(f"command line of {len(text):,} characters is over the "
                                     f"limit of {limit:,}: split it, or raise max_line "
                                     "(WORKBENCH_MAX_LINE)")
            cmd = line if isinstance(line, Command) else parse(line)
            if cmd is None:
                return Outcome(n=0, cmd="", ok=True)
            text = cmd.text
            out, result = self._dispatch(cmd, progress, cancelled)
            if cmd.verb in UNDOABLE and self.state is not before:
                self.undo_stack.append(before)
                self.redo_stack.clear()
            # The digest is of the output as the log stores it (rounded), so replay can check
            # a stored output against it; where tensors went is not part of it.
            outcome = Outcome(n, text, True, out, None, digest_out(_json_safe(out)),
                              time.perf_counter() - start, result)
        except WorkbenchError as exc:
            outcome = Outcome(n, text, False, error=str(exc),
                              seconds=time.perf_counter() - start)
        except Cancelled:
            outcome = Outcome(n, text, False, error="cancelled; state unchanged",
                              seconds=time.perf_counter() - start)
        except torch.cuda.OutOfMemoryError:
            outcome = Outcome(n, text, False, error="out of GPU memory: use fewer prompts "
                              "(task ... n=) or a smaller model", seconds=time.perf_counter()
                              - start)
        except Exception as exc:  # a bug: one line and a crash report, never a traceback
            log.debug("command %r raised", text, exc_info=True)
            self.state = before
            error = crash_report(exc, f"execute {text[:1000]!r}") + "; the state is unchanged"
            outcome = Outcome(n, text[:200], False, error=error,
                              seconds=time.perf_counter() - start)
        if not outcome.ok:
            self.state = before  # a failed command leaves the state exactly as it was
            if len(outcome.cmd) > 1000:  # the log keeps a bounded copy of a pasted blob
                outcome = dataclasses.replace(outcome, cmd=outcome.cmd[:1000] + "…")
        try:
            self._append_log(outcome)
        except WorkbenchError as exc:  # e.g. disk full: keep memory and file in step
            self.state, (self.undo_stack, self.redo_stack) = before, stacks
            return Outcome(0, outcome.cmd, False, error=f"{exc}; the command was not kept "
                           "(state unchanged)", seconds=outcome.seconds)
        self.outcomes.append(outcome)
        return outcome

    # -- verbs -------------------------------------------------------------------------------

    def _dispatch(self, cmd: Command, progress: Callable[[float, str], None] | None,
                  cancelled: Callable[[], bool] | None) -> tuple[dict[str, Any], Any]:
        verb = cmd.verb
        if verb == "help":
            return {"text": help_text(cmd.args[0] if cmd.args else None)}, None
        if verb == "undo" or verb == "redo":
            return self._undo_redo(verb), None
        if verb == "run":
            return self._run(cmd, progress, cancelled)
        handler = getattr(self, f"_{verb}")
        return handler(cmd)  # type: ignore[no-any-return]

    def _load(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        step = cmd.option("step")
        source = cmd.args[0] if step is None else str(checkpoint_path(cmd.args[0], int(step)))
        model = load_model(source, device=cmd.option("device") or self.device,
                           dtype=cmd.option("dtype") or "float32")  # type: ignore[arg-type]
        self.state = replace(self.state, model=model, ablations=(),
                             dictionaries=DictionarySet())
        if self.state.prompts is None:
            name, options = model.default_task()
            prompts = make_task(name, **options).prompt_set(256, self.seed, split="test")
            self.state = replace(self.state, prompts=prompts)
        card = model.card
        return {"model": card.name, "identity": model.identity.sha256,
                "layers": card.n_layers, "heads": card.n_heads, "device": card.device,
                "dtype": card.dtype, **({"step": int(step)} if step is not None else {})}, model

    def _task(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        opts = dict(cmd.opts)
        n = int(opts.pop("n", 256))
        seed = int(opts.pop("seed", self.seed))
        corrupt = opts.pop("corrupt", None)
        split = opts.pop("split", "test")
        task = make_task(cmd.args[0], **opts)
        self._check_size(n, task.prompt_set(1, seed, corrupt, split))  # type: ignore[arg-type]
        prompts = task.prompt_set(n, seed, corrupt, split)  # type: ignore[arg-type]
        return self._set_prompts(prompts)

    def _check_size(self, n: int, sample: PromptSet) -> None:
        """Refuse a prompt set past `settings.max_prompts` before building it, with its cost."""
        limit = settings.current().max_prompts
        if n <= limit:
            return
        model = self.state.model
        tokens = len(sample.pairs[0].clean) + len(sample.pairs[0].answer)  # about, per prompt
        width = model.card.d_model * (2 * model.card.n_layers + 2) if model else 0
        cost = f", about {3 * n * tokens * width * 4 / 2**30:,.1f} GiB of cached activations" \
            if width else ""
        raise WorkbenchError(f"n={n:,} prompts is over the limit of {limit:,}{cost}: use a "
                             f"smaller n, or raise the limit (WORKBENCH_MAX_PROMPTS={n} or "
                             "max_prompts in settings.toml)")

    def _prompts(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        path = Path(cmd.args[0])
        limit = settings.current().max_prompts
        if path.is_file() and path.stat().st_size > limit * 4096:  # ~4 KB a pair at most
            raise WorkbenchError(f"prompts: {path} is {path.stat().st_size:,} bytes, more than "
                                 f"{limit:,} pairs can take: use a smaller file, or raise "
                                 "max_prompts (WORKBENCH_MAX_PROMPTS)")
        prompts = PromptSet.load_jsonl(path)
        self._check_size(len(prompts), prompts)
        check_alphabet(prompts, self.state.model)
        return self._set_prompts(prompts)

    def _set_prompts(self, prompts: PromptSet) -> tuple[dict[str, Any], Any]:
        model = self._model()
        encode(prompts, model.tokenizer)  # fail now, not at the next perf
        self.state = replace(self.state, prompts=prompts)
        first = prompts.pairs[0]
        return {"name": prompts.name, "n": len(prompts), "example": first.clean,
                "answer": "".join(first.answer), "corrupted": first.corrupted}, prompts

    def _metric(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        found = get_metric(cmd.args[0], self.metric_fns)
        self.state = replace(self.state, metric=found.name)
        return {"metric": found.name}, None

    def _ablate(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        engine = self.engine()
        mode: Mode = cmd.option("mode") or self.state.mode  # type: ignore[assignment]
        pos = cmd.option("pos")
        targets = dict.fromkeys(self._targets(cmd.args, engine.graph, pos))  # a0.0 a0.0: once
        new = [Ablation(t, mode) for t in targets]
        names = {str(a.target) for a in new}
        kept = tuple(a for a in self.state.ablations if str(a.target) not in names)
        ablations = kept + tuple(new)
        engine.patch(ablations)  # validate before changing state
        self.state = replace(self.state, ablations=ablations, mode=mode)
        return self._perf_out(), None

    def _restore(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        if cmd.args == ("all",):
            self.state = replace(self.state, ablations=())
        else:
            names = {str(t) for t in self._targets(cmd.args, self.engine().graph, None)}
            missing = names - {str(a.target) for a in self.state.ablations}
            if missing:
                raise WorkbenchError(f"{sorted(missing)[0]} is not ablated; nothing to restore")
            self.state = replace(self.state, ablations=tuple(
                a for a in self.state.ablations if str(a.target) not in names))
        return self._perf_out(), None

    def _perf(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        return self._perf_out(cmd.option("metric")), None

    def _run(self, cmd: Command, progress: Callable[[float, str], None] | None,
             cancelled: Callable[[], bool] | None) -> tuple[dict[str, Any], Any]:
        name = cmd.args[0]
        if name not in self.registry:
            near = difflib.get_close_matches(name, self.registry, n=1)
            hint = f"did you mean {near[0]}?" if near else \
                "techniques: " + ", ".join(sorted(self.registry))
            raise WorkbenchError(f"unknown technique {name!r}: {hint}")
        tech = self.registry[name]
        params = tech.params(dict(cmd.opts))
        engine = self.engine()
        ctx = Context(model=self._model(), prompts=self._prompts_now(), enc=engine.enc,
                      metric=self.state.metric, mode=self.state.mode,  # type: ignore[arg-type]
                      graph=engine.graph, engine=engine, ablations=self.state.ablations,
                      dictionaries=self.state.dictionaries,
                      progress=progress or (lambda f, m: None),
                      cancelled=cancelled or (lambda: False), metrics=self.metrics)
        _check_work(tech, ctx, params)
        result = tech.run(ctx, params)
        rid = f"r{self.state.n_results + 1}"
        card = self._model().card
        self.state = replace(self.state, results=self.state.results + ((rid, result),),
                             made_by=self.state.made_by + ((rid, f"{card.name} {card.dtype}"),),
                             n_results=self.state.n_results + 1)
        out = {"id": rid, "technique": name, **result.summary(), "dtype": card.dtype}
        used = getattr(result, "metric", None)
        if used is not None:
            out["metric"] = used  # the metric the technique scored with
        tensors = _tensors_of(result)
        if tensors and self.path is not None:
            out["tensors"] = save_tensors(self.path, rid, tensors)
        return out, result

    def _select(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        engine = self.engine()
        first = cmd.args[0]
        if first.startswith("r") and first[1:].isdigit():
            top, threshold = cmd.option("top"), cmd.option("threshold")
            result = self.state.result(first)
            chosen = select(result, engine.graph, top=int(top) if top else None,
                            threshold=float(threshold) if threshold else None)
            circuit, dropped, note = chosen.circuit, chosen.dropped, chosen.note
            level = "node" if result.kind == "node_scores" else getattr(result, "level", "edge")
        else:
            targets = self._targets(cmd.args, engine.graph, None)
            edge = next((t for t in targets if isinstance(t, Edge)), None)
            if edge is not None:
                raise WorkbenchError(f"select NODE... takes components, not edges ({edge}); "
                                     "select r<n> top=K picks edges from edge scores")
            nodes = [n.base() for n in targets]
            circuit, level = Circuit.from_nodes(nodes, engine.graph), "node"
            dropped, note = 0, ""
        cid = f"c{self.state.n_circuits + 1}"
        circuit = Circuit(circuit.nodes, circuit.edges, circuit.scores, name=cid)
        self.state = replace(self.state, circuits=self.state.circuits + (
            (cid, NamedCircuit(circuit, level)),), n_circuits=self.state.n_circuits + 1)
        out = {"id": cid, "level": level, "nodes": [str(n) for n in circuit.nodes],
               "edges": len(circuit.edges)}
        if dropped:  # edge scores: chosen edges cut off from input or logits
            out["dropped"] = dropped
        if note:
            out["note"] = note
        return out, circuit

    def _check(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        named = self.state.circuit(cmd.args[0])
        engine = self.engine()
        mode: Mode = cmd.option("mode") or self.state.mode  # type: ignore[assignment]
        level = cmd.option("level") or named.level
        if named.level == "feature" or any(n.kind == "feature" for n in named.circuit.nodes):
            fn = get_metric(cmd.option("metric") or self.state.metric, self.metric_fns)
            perf = self._feature_checker(engine).perf(named.circuit, fn, mode)
            return {"id": cmd.args[0], "level": "feature", "mode": mode,
                    **_perf_json(perf)}, perf
        logits = engine.circuit_logits(named.circuit, mode, level)
        perf = self._perf_of(engine, logits, mode, cmd.option("metric"))
        return {"id": cmd.args[0], "level": level, "mode": mode, **_perf_json(perf)}, perf

    def _sae(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        """`sae load NAME_OR_DIR [layer=L] [site=S]`: attach dictionaries to the model."""
        from workbench.features.files import resolve

        engine = self.engine()
        found = resolve(cmd.args[1], download=cmd.option("download") == "yes")
        layer, site = cmd.option("layer"), cmd.option("site")
        chosen = [d for d in found if (layer is None or d.layer == int(layer))
                  and (site is None or d.site == site)]
        if not chosen:
            have = ", ".join(d.describe() for d in found)
            raise WorkbenchError(f"sae load {cmd.args[1]}: nothing matches layer={layer} "
                                 f"site={site} (it has {have})")
        dicts = self.state.dictionaries.with_(
            d.to(engine.weights.W_E.dtype, engine.device) for d in chosen)
        dicts.check(engine.weights)
        self.state = replace(self.state, dictionaries=dicts)
        return {"loaded": [d.describe() for d in chosen],
                "attached": dicts.keys()}, dicts

    def _feature_checker(self, engine: AblationEngine) -> Any:
        from workbench.features.circuit import FeatureChecker

        dicts = self.state.dictionaries
        last = getattr(self, "_checker", None)  # (engine, dicts, checker) of the last check
        if last is None or last[0] is not engine or last[1] is not dicts:
            last = (engine, dicts, FeatureChecker(engine, dicts))
            self._checker = last
        return last[2]

    def _compare(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        a, b = (self.state.circuit(c).circuit for c in cmd.args)
        diff = compare(a, b)
        return {"shared_nodes": [str(n) for n in diff.shared_nodes],
                "only_a_nodes": [str(n) for n in diff.only_a_nodes],
                "only_b_nodes": [str(n) for n in diff.only_b_nodes],
                "shared_edges": len(diff.shared_edges), "only_a_edges": len(diff.only_a_edges),
                "only_b_edges": len(diff.only_b_edges),
                "jaccard_nodes": round(diff.jaccard_nodes, 6),
                "jaccard_edges": round(diff.jaccard_edges, 6)}, diff

    def _export(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        target = cmd.args[0]
        figure = figure_of(self.state.result(target)) if target.startswith("r") else None
        circuit = self.state.circuit(target).circuit if figure is None else None
        found = self.writes.target(cmd.args[1])
        out: dict[str, Any] = {"id": target, "path": cmd.args[1]}
        if found is None:  # a reopened session's recorded export: not repeated
            return {**out, "written": None}, None
        dest = _new_folder(found)  # like save: out/ may be new
        if circuit is not None and cmd.args[1].lower().endswith(".pdf"):
            figure = CircuitFig(circuit.name or target, circuit)
        if figure is not None:
            path = save_figure(figure, dest)
        else:
            assert circuit is not None
            path = export(circuit, dest)
        return ({**out, "written": str(path)} if str(path) != cmd.args[1] else out), path

    def _save(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        found = self.writes.target(cmd.args[0])
        out: dict[str, Any] = {"path": cmd.args[0], "commands": len(self.outcomes)}
        if found is None:
            return {**out, "written": None}, None
        target = _new_folder(found)
        if str(target) != cmd.args[0]:
            out["written"] = str(target)
        if self.path is not None and target.resolve() == self.path.resolve():
            raise WorkbenchError(f"save: {target} is this session's own log; choose another path")
        if self.path is None or not self.path.exists():
            # No log file (a notebook session, a replay without --log): write it from memory.
            lines = [self._header().to_json(), *(_entry(o).to_json() for o in self.outcomes
                                                 if o.n > 0)]
            text = "".join(json.dumps(line, ensure_ascii=False, separators=(", ", ": "))
                           + "\n" for line in lines)
        else:
            text = self.path.read_text(encoding="utf-8")
        write_atomic(target, text)
        return out, None

    def _undo_redo(self, verb: str) -> dict[str, Any]:
        source, sink = (self.undo_stack, self.redo_stack) if verb == "undo" else \
            (self.redo_stack, self.undo_stack)
        if not source:
            raise WorkbenchError(f"nothing to {verb}")
        sink.append(self.state)
        self.state = source.pop()
        return {"ablations": [str(a.target) for a in self.state.ablations]}

    # -- helpers -----------------------------------------------------------------------------

    def _model(self) -> LoadedModel:
        if self.state.model is None:
            raise WorkbenchError(f"no model loaded: try load {DEFAULT_MODEL}")
        return self.state.model

    def _prompts_now(self) -> PromptSet:
        if self.state.prompts is None:
            raise WorkbenchError("no prompt set: try task addition digits=3")
        return self.state.prompts

    def engine(self) -> AblationEngine:
        """The ablation engine for the current model and prompts (built once, then cached)."""
        model, prompts = self._model(), self._prompts_now()
        key = (id(model), id(prompts))
        hit = self._engines.pop(key, None)
        if hit is None or hit[0] is not model or hit[1] is not prompts:
            # Cached runs are large (GBs at GPT-2 XL): keep the last few prompt sets of the
            # current model only; undo to an evicted one rebuilds it.
            for old in [k for k, (m, _, _) in self._engines.items() if m is not model]:
                del self._engines[old]
            while len(self._engines) >= ENGINES_KEPT:
                del self._engines[next(iter(self._engines))]
            memory.trim()
            hit = (model, prompts, AblationEngine(model, encode(prompts, model.tokenizer),
                                                  Graph.of(model.card)))
        self._engines[key] = hit
        return hit[2]

    def _targets(self, words: tuple[str, ...], graph: Graph, pos: str | None) -> list[Any]:
        out: list[Any] = []
        for word in words:
            if "->" in word:
                out.append(parse_edge(word))  # the engine checks it is in the graph
                continue
            nodes = expand(word, graph)
            if pos is not None:
                try:
                    p = int(pos)
                except ValueError:
                    raise WorkbenchError(f"pos must be an integer, got {pos!r}") from None
                nodes = [n.at(p) for n in nodes]
            out.extend(nodes)
        return out

    @property
    def metrics(self) -> dict[str, Metric]:
        """Every metric a command may name: the built-ins and the session's own (which win)."""
        return {**BUILTIN_METRICS, **self.metric_fns}

    def _perf_of(self, engine: AblationEngine, logits: Tensor, mode: Mode,
                 name: str | None = None) -> Perf:
        return engine.perf(logits, get_metric(name or self.state.metric, self.metric_fns), mode)

    def _perf_out(self, name: str | None = None) -> dict[str, Any]:
        engine = self.engine()
        perf = self._perf_of(engine, engine.logits(self.state.ablations), self.state.mode, name)
        return {"ablated": [f"{a.target}" + (f" {a.mode}" if a.mode != self.state.mode else "")
                            for a in self.state.ablations], "mode": self.state.mode,
                **_perf_json(perf)}

    # -- the log -----------------------------------------------------------------------------

    def _start_log(self) -> None:
        """Start a new log. A header written before a `load` names no model: replay then
        runs the recorded `load` (the log is append-only, so the header is never rewritten)."""
        if self._log is not None:
            self._log.start(self._header())

    def _header(self) -> Header:
        model = self.state.model
        return Header(workbench=__version__,
                      model_source=model.identity.source if model else None,
                      model_sha256=model.identity.sha256 if model else None,
                      device=model.card.device if model else self.device, seed=self.seed)

    def _append_log(self, outcome: Outcome) -> None:
        if self._log is None or outcome.n == 0 or not self.recording:
            return
        self._log.append(_entry(outcome))


def _entry(outcome: Outcome) -> Entry:
    return Entry(n=outcome.n, cmd=outcome.cmd, ok=outcome.ok, out=_json_safe(outcome.out),
                 error=outcome.error, digest=outcome.digest, seconds=round(outcome.seconds, 4))


def _check_work(tech: Technique, ctx: Context, params: Any) -> None:
    """Refuse a run whose estimated cost is past `settings.max_work`, before it starts."""
    if tech.estimate is None:
        return
    per_prompt = float(tech.estimate(ctx, params))
    work, limit = per_prompt * len(ctx.prompts), settings.current().max_work
    if work > limit:
        raise WorkbenchError(
            f"run {tech.name}: about {work:,.0f} prompt forward passes ({per_prompt:,.0f} FE "
            f"x {len(ctx.prompts):,} prompts; {tech.cost}) is over the limit of {limit:,}: use "
            f"fewer prompts (task ... n=) or smaller options, or raise the limit "
            f"(WORKBENCH_MAX_WORK={int(work) + 1} or max_work in settings.toml)")


def _new_folder(path: Path) -> Path:
    """`path`, with its folder created when missing (exports often go to a new `out/`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkbenchError(f"cannot create folder '{path.parent}': "
                             f"{exc.strerror or exc}; choose a folder you can write to") from None
    return path


def _perf_json(perf: Perf) -> dict[str, Any]:
    return {"percent": _num(perf.percent), "metric_name": perf.metric_name,
            "metric": _num(perf.metric), "metric_full": _num(perf.metric_full),
            "metric_empty": _num(perf.metric_empty), "accuracy": _num(perf.report.accuracy),
            "per_digit": [_num(a) for a in perf.report.per_digit_accuracy],
            "logit_diff": _num(perf.report.logit_diff)}


def _num(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _tensors_of(result: Result) -> dict[str, Tensor]:
    """The large arrays of a result, stored beside the log as safetensors."""
    if dataclasses.is_dataclass(result):
        return {f.name: getattr(result, f.name).detach().cpu().contiguous()
                for f in dataclasses.fields(result)
                if isinstance(getattr(result, f.name), Tensor)}
    return {}
