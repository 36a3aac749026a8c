"""The session: the only place state changes. TUI, replay and notebooks all call `execute`.

1. `execute(line)` parses a command (`workbench.commands`), runs its verb against the current
   `State` and returns an `Outcome` (data for display plus a JSON summary).
2. A verb that fails raises `WorkbenchError`; the state is left exactly as it was and the
   outcome carries the one-line error.
3. State is an immutable `State` value; state-changing verbs push the old value on the undo
   stack. Models and ablation engines are cached by identity, so undo never reloads.
4. Every command is appended to the session log (JSON Lines, atomic rewrite) with its summary,
   a digest of it and the seconds taken: a crash loses nothing and the file replays.

Invariant: nothing outside `execute` mutates the session; outcomes are JSON-safe summaries plus
the live result objects the TUI renders.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from workbench import __version__
from workbench.ablation import Ablation, AblationEngine, Perf
from workbench.commands import Command, help_text, parse
from workbench.errors import WorkbenchError
from workbench.export import export
from workbench.features.replacement import DictionarySet
from workbench.forward import Mode
from workbench.graph import Circuit, Edge, Graph, compare, expand, parse_edge
from workbench.metrics import METRICS, Report
from workbench.model import DEFAULT_MODEL, LoadedModel, load_model
from workbench.plugins import Cancelled, Context, Result, Technique, load_registry, select_circuit
from workbench.sessionlog import Entry, Header, SessionLog, digest, save_tensors
from workbench.tasks import PromptSet, make_task
from workbench.tasks.encode import EncodedPrompts, encode

log = logging.getLogger(__name__)

MetricFn = Callable[[Tensor, EncodedPrompts], Tensor]  # answer logits -> (batch,) values


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


UNDOABLE = {"load", "task", "prompts", "metric", "ablate", "restore", "run", "select", "sae"}


class Session:
    """A resident model, a prompt set and the investigation built on them."""

    def __init__(self, path: str | Path | None = None, model: LoadedModel | str | None = None,
                 metrics: dict[str, MetricFn] | None = None, seed: int = 0,
                 device: str = "auto", registry: dict[str, Technique] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.seed, self.device = seed, device
        self.state = State()
        self.undo_stack: list[State] = []
        self.redo_stack: list[State] = []
        self.outcomes: list[Outcome] = []
        self.metric_fns: dict[str, MetricFn] = dict(metrics or {})
        self.registry = registry if registry is not None else load_registry()
        self._engines: dict[tuple[int, int], AblationEngine] = {}
        self._encoded: dict[tuple[int, int], EncodedPrompts] = {}
        self._log = SessionLog(self.path) if self.path is not None else None
        if isinstance(model, LoadedModel):
            self.state = replace(self.state, model=model)
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
        try:
            cmd = line if isinstance(line, Command) else parse(line)
            if cmd is None:
                return Outcome(n=0, cmd="", ok=True)
            text = cmd.text
            before = self.state
            out, result = self._dispatch(cmd, progress, cancelled)
            if cmd.verb in UNDOABLE and self.state is not before:
                self.undo_stack.append(before)
                self.redo_stack.clear()
            # Where a result's tensors were stored depends on the log's name, not the result.
            digested = {k: v for k, v in out.items() if k != "tensors"}
            outcome = Outcome(n, text, True, out, None, digest(digested),
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
        self.outcomes.append(outcome)
        self._append_log(outcome)
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
        model = load_model(cmd.args[0], device=cmd.option("device") or self.device,
                           dtype=cmd.option("dtype") or "float32")  # type: ignore[arg-type]
        self.state = replace(self.state, model=model, ablations=(),
                             dictionaries=DictionarySet())
        if self.state.prompts is None:
            name, options = model.default_task()
            prompts = make_task(name, **options).prompt_set(256, self.seed, split="test")
            self.state = replace(self.state, prompts=prompts)
        if self._log is not None and self._header_model() is None:
            self._start_log(keep_entries=True)
        card = model.card
        return {"model": card.name, "identity": model.identity.sha256,
                "layers": card.n_layers, "heads": card.n_heads, "device": card.device}, model

    def _task(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        opts = dict(cmd.opts)
        n = int(opts.pop("n", 256))
        seed = int(opts.pop("seed", self.seed))
        corrupt = opts.pop("corrupt", None)
        split = opts.pop("split", "test")
        prompts = make_task(cmd.args[0], **opts).prompt_set(n, seed, corrupt, split)  # type: ignore[arg-type]
        return self._set_prompts(prompts)

    def _prompts(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        return self._set_prompts(PromptSet.load_jsonl(Path(cmd.args[0])))

    def _set_prompts(self, prompts: PromptSet) -> tuple[dict[str, Any], Any]:
        model = self._model()
        encode(prompts, model.tokenizer)  # fail now, not at the next perf
        self.state = replace(self.state, prompts=prompts)
        first = prompts.pairs[0]
        return {"name": prompts.name, "n": len(prompts), "example": first.clean,
                "answer": "".join(first.answer), "corrupted": first.corrupted}, prompts

    def _metric(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        name = cmd.args[0]
        if name not in METRICS and name not in self.metric_fns:
            raise WorkbenchError(f"unknown metric {name!r}: choose one of "
                                 + ", ".join([*METRICS, *self.metric_fns]))
        self.state = replace(self.state, metric=name)
        return {"metric": name}, None

    def _ablate(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        engine = self.engine()
        mode: Mode = cmd.option("mode") or self.state.mode  # type: ignore[assignment]
        pos = cmd.option("pos")
        new = [Ablation(t, mode) for t in self._targets(cmd.args, engine.graph, pos)]
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
        return self._perf_out(), None

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
                      cancelled=cancelled or (lambda: False))
        result = tech.run(ctx, params)
        rid = f"r{self.state.n_results + 1}"
        self.state = replace(self.state, results=self.state.results + ((rid, result),),
                             n_results=self.state.n_results + 1)
        out = {"id": rid, "technique": name, **result.summary()}
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
            circuit = select_circuit(result, engine.graph,
                                     top=int(top) if top else None,
                                     threshold=float(threshold) if threshold else None)
            level = "node" if result.kind == "node_scores" else getattr(result, "level", "edge")
        else:
            targets = self._targets(cmd.args, engine.graph, None)
            edge = next((t for t in targets if isinstance(t, Edge)), None)
            if edge is not None:
                raise WorkbenchError(f"select NODE... takes components, not edges ({edge}); "
                                     "select r<n> top=K picks edges from edge scores")
            nodes = [n.base() for n in targets]
            circuit, level = Circuit.from_nodes(nodes, engine.graph), "node"
        cid = f"c{self.state.n_circuits + 1}"
        circuit = Circuit(circuit.nodes, circuit.edges, circuit.scores, name=cid)
        self.state = replace(self.state, circuits=self.state.circuits + (
            (cid, NamedCircuit(circuit, level)),), n_circuits=self.state.n_circuits + 1)
        return {"id": cid, "level": level, "nodes": [str(n) for n in circuit.nodes],
                "edges": len(circuit.edges)}, circuit

    def _check(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        named = self.state.circuit(cmd.args[0])
        engine = self.engine()
        mode: Mode = cmd.option("mode") or self.state.mode  # type: ignore[assignment]
        level = cmd.option("level") or named.level
        if named.level == "feature" or any(n.kind == "feature" for n in named.circuit.nodes):
            perf = self._feature_checker(engine).perf(named.circuit, self.state.metric, mode)
            return {"id": cmd.args[0], "level": "feature", "mode": mode,
                    **_perf_json(perf)}, perf
        logits = engine.circuit_logits(named.circuit, mode, level)
        perf = self._perf_of(engine, logits, mode)
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
        circuit = self.state.circuit(cmd.args[0]).circuit
        Path(cmd.args[1]).parent.mkdir(parents=True, exist_ok=True)  # like save: out/ may be new
        path = export(circuit, Path(cmd.args[1]))
        return {"id": cmd.args[0], "path": str(path)}, path

    def _save(self, cmd: Command) -> tuple[dict[str, Any], Any]:
        target = Path(cmd.args[0])
        if self.path is None or not self.path.exists():
            # No log file (a notebook session, a replay without --log): write it from memory.
            log = SessionLog(target)
            log.start(self._header())
            for outcome in self.outcomes:
                log.append(_entry(outcome))
            return {"path": str(target), "commands": len(self.outcomes)}, None
        target.parent.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text()
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)
        return {"path": str(target), "commands": len(self.outcomes)}, None

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
        if key not in self._engines:
            self._engines[key] = AblationEngine(model, encode(prompts, model.tokenizer),
                                                Graph.of(model.card))
        return self._engines[key]

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

    def _perf_of(self, engine: AblationEngine, logits: Tensor, mode: Mode) -> Perf:
        name = self.state.metric
        if name in self.metric_fns:
            fn = self.metric_fns[name]
            value = float(fn(logits, engine.enc).float().mean())
            full = float(fn(engine.clean_logits, engine.enc).float().mean())
            empty = float(fn(engine.empty_logits(mode), engine.enc).float().mean())
            from workbench.metrics import performance

            return Perf(performance(value, full, empty), name, value, full, empty,
                        Report.of(logits, engine.enc))
        return engine.perf(logits, name, mode)  # type: ignore[arg-type]

    def _perf_out(self) -> dict[str, Any]:
        engine = self.engine()
        perf = self._perf_of(engine, engine.logits(self.state.ablations), self.state.mode)
        return {"ablated": [f"{a.target}" + (f" {a.mode}" if a.mode != self.state.mode else "")
                            for a in self.state.ablations], "mode": self.state.mode,
                **_perf_json(perf)}

    # -- the log -----------------------------------------------------------------------------

    def _header_model(self) -> str | None:
        """The model the log's header names (None until the log knows one)."""
        if self._log is None or self.path is None or not self.path.exists():
            return None
        return self._log.header().model_source

    def _start_log(self, keep_entries: bool = False) -> None:
        if self._log is None:
            return
        header = self._header()
        entries = self._log.entries() if keep_entries and self.path and self.path.exists() \
            else []
        self._log.start(header)
        for entry in entries:
            self._log.append(entry)

    def _header(self) -> Header:
        model = self.state.model
        return Header(workbench=__version__,
                      model_source=model.identity.source if model else None,
                      model_sha256=model.identity.sha256 if model else None,
                      device=model.card.device if model else self.device, seed=self.seed)

    def _append_log(self, outcome: Outcome) -> None:
        if self._log is None or outcome.n == 0:
            return
        self._log.append(_entry(outcome))


def _entry(outcome: Outcome) -> Entry:
    return Entry(n=outcome.n, cmd=outcome.cmd, ok=outcome.ok, out=_json_safe(outcome.out),
                 error=outcome.error, digest=outcome.digest, seconds=round(outcome.seconds, 4))


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
