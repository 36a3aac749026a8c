"""Dictionaries on disk: SAELens's layout (write and read), circuit-tracer's transcoders (read),
the bundled sets, and hub names through huggingface_hub.

SAELens layout: a folder with `cfg.json` (d_in, d_sae, hook_name, hook_layer, architecture,
activation_fn_kwargs / k, apply_b_dec_to_input, normalize_activations, model_name; a
transcoder adds d_out, hook_name_out, hook_layer_out) and `sae_weights.safetensors` with
W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_out), b_dec and, for JumpReLU, threshold.
circuit-tracer: a folder with `config.yaml` (feature_input_hook, feature_output_hook,
transcoders: one file per layer, in layer order) or bare `layer_L.safetensors` files, each
with W_enc, b_enc, W_dec, b_dec (either orientation; circuit-tracer's converted files hold
W_enc as (d_sae, d_model)) and `activation_function.threshold` for JumpReLU.

`resolve(name)` order: a bundled model's `dictionaries/`; a folder; a hub name in the local
Hugging Face cache (a download only when asked). A set is a folder whose sub-folders are
SAELens dictionaries (the bundled layout). Nothing here writes unless `save` is called.

Invariant: `load_saelens(save_saelens(d))` equals `d` bit for bit (tested), and every file
problem is a one-line `WorkbenchError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from workbench.errors import WorkbenchError
from workbench.features.dictionary import SPARSITIES, Dictionary, SiteName
from workbench.graph import write_atomic
from workbench.hooks import Site, hook_name, parse_hook_name

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
CT_CONFIG = "config.yaml"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
# Where each site reads and writes, as hook points of a processed TransformerLens model.
SITE_HOOKS: dict[SiteName, tuple[Site, Site]] = {
    "attn_out": (Site.ATTN_OUT, Site.ATTN_OUT), "mlp_out": (Site.MLP_OUT, Site.MLP_OUT),
    "resid_pre": (Site.RESID_PRE, Site.RESID_PRE), "mlp": (Site.LN2_NORMALIZED, Site.MLP_OUT),
}


def save_saelens(d: Dictionary, folder: Path, model_name: str = "") -> Path:
    """Write `d` as `folder/cfg.json` + `folder/sae_weights.safetensors` (folder is made)."""
    folder.mkdir(parents=True, exist_ok=True)
    site_in, site_out = SITE_HOOKS[d.site]
    if d.pre_ln:
        site_in = Site.MLP_IN
    arch = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[d.sparsity]
    if d.transcoder:
        arch = "transcoder" if d.sparsity == "relu" else f"{d.sparsity}_transcoder"
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": d.d_in, "d_sae": d.d_sae, "dtype": "float32",
        "device": "cpu", "model_name": model_name, "hook_name": hook_name(site_in, d.layer),
        "hook_layer": d.layer, "hook_head_index": None,
        "activation_fn_str": "topk" if d.sparsity == "topk" else "relu",
        "activation_fn_kwargs": {"k": d.k} if d.k else {},
        "apply_b_dec_to_input": d.apply_b_dec_to_input, "normalize_activations": "none",
        "finetuning_scaling_factor": False, "prepend_bos": True, "context_size": None,
        "dataset_path": "", "neuronpedia_id": None,
        "model_from_pretrained_kwargs": {"fold_ln": True, "center_writing_weights": True,
                                         "center_unembed": True},
        "workbench": {"site": d.site, "sparsity": d.sparsity, **d.meta},
    }
    if d.k:
        cfg["k"] = d.k
    if d.transcoder:
        cfg.update(d_out=d.d_out, hook_name_out=hook_name(site_out, d.layer),
                   hook_layer_out=d.layer, hook_head_index_out=None)
    tensors = {"W_enc": d.W_enc, "b_enc": d.b_enc, "W_dec": d.W_dec, "b_dec": d.b_dec}
    if d.threshold is not None:
        tensors["threshold"] = d.threshold
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    write_atomic(folder / WEIGHTS, save(tensors))
    write_atomic(folder / CFG, (json.dumps(cfg, indent=2) + "\n").encode())
    return folder


def load_saelens(folder: Path) -> Dictionary:
    """Read one SAELens-layout dictionary (SAE or transcoder)."""
    cfg = _read_json(folder / CFG)
    tensors = _read_tensors(folder / WEIGHTS)
    where = f"{folder / CFG}"
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise WorkbenchError(f"{where}: normalize_activations={norm!r} is not supported "
                             "(fold the scaling into W_enc/W_dec first)")
    arch = str(cfg.get("architecture", "standard"))
    if "gated" in arch:
        raise WorkbenchError(f"{where}: gated SAEs are not supported (relu, jumprelu, topk)")
    if cfg.get("hook_head_index") is not None:
        raise WorkbenchError(f"{where}: per-head SAEs (hook_head_index) are not supported")
    own = cfg.get("workbench", {}) if isinstance(cfg.get("workbench"), dict) else {}
    sparsity = own.get("sparsity") or ("jumprelu" if "jumprelu" in arch else
                                       "topk" if "topk" in arch or cfg.get(
                                           "activation_fn_str") == "topk" else "relu")
    if sparsity not in SPARSITIES:
        raise WorkbenchError(f"{where}: unknown sparsity {sparsity!r}")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    site_in, layer = _site_of(cfg.get("hook_name"), where)
    out_name = cfg.get("hook_name_out")
    transcoder = out_name is not None and out_name != cfg.get("hook_name")
    if transcoder:
        site_out, layer_out = _site_of(out_name, where)
        if (site_in, site_out) not in ((Site.LN2_NORMALIZED, Site.MLP_OUT),
                                       (Site.MLP_IN, Site.MLP_OUT)) or layer_out != layer:
            raise WorkbenchError(f"{where}: a transcoder must read layer L's MLP input and write "
                                 f"its output, not {cfg.get('hook_name')} -> {out_name}")
        site: SiteName = "mlp"
    else:
        by_hook = {v[0]: k for k, v in SITE_HOOKS.items() if k != "mlp"}
        if site_in not in by_hook:
            raise WorkbenchError(f"{where}: SAEs on {cfg.get('hook_name')} are not supported "
                                 "(attn_out, mlp_out, resid_pre)")
        site = by_hook[site_in]  # type: ignore[assignment]
    if "W_skip" in tensors:
        raise WorkbenchError(f"{folder / WEIGHTS}: skip connections (W_skip) are not supported")
    d = _build(site, int(layer or 0), tensors, sparsity, int(k) if k else None,
               bool(cfg.get("apply_b_dec_to_input", False)), folder / WEIGHTS)
    meta = {k: v for k, v in own.items() if k not in ("site", "sparsity")}
    meta["source"] = str(folder)
    return Dictionary(**{**_fields(d), "meta": meta, "pre_ln": site_in == Site.MLP_IN})


def load_circuit_tracer(folder: Path) -> list[Dictionary]:
    """Per-layer transcoders in circuit-tracer's layout (config.yaml or layer_L files)."""
    config = folder / CT_CONFIG
    if config.is_file():
        import yaml

        try:
            spec = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise WorkbenchError(f"cannot read {config}: {exc}".splitlines()[0]) from None
        if not isinstance(spec, dict) or not isinstance(spec.get("transcoders"), list):
            raise WorkbenchError(f"{config}: expected a 'transcoders' list of files")
        for key in ("feature_input_hook", "feature_output_hook"):
            hook = str(spec.get(key, ""))
            ok = {"feature_input_hook": ("ln2.hook_normalized", "hook_mlp_in", "mlp.hook_in"),
                  "feature_output_hook": ("hook_mlp_out", "mlp.hook_out")}[key]
            if hook not in ok:
                raise WorkbenchError(f"{config}: {key}={hook!r} is not supported ({', '.join(ok)})")
        files = [_local(folder, str(p), config) for p in spec["transcoders"]]
        pre_ln = spec["feature_input_hook"] == "hook_mlp_in"
    else:
        files = sorted(folder.glob("layer_*.safetensors"),
                       key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit()
                       else -1)
        if not files:
            raise WorkbenchError(f"{folder}: no {CT_CONFIG} and no layer_L.safetensors files")
        pre_ln = False
    out = []
    for layer, path in enumerate(files):
        if path.stem.startswith("layer_") and path.stem[6:].isdigit():
            layer = int(path.stem[6:])
        t = _read_tensors(path)
        if "W_skip" in t:
            raise WorkbenchError(f"{path}: skip connections (W_skip) are not supported")
        if "activation_function.threshold" in t:
            t["threshold"] = t.pop("activation_function.threshold")
        d_model = t["b_dec"].shape[0] if "b_dec" in t else None
        if d_model is not None and "W_enc" in t and t["W_enc"].shape[0] != d_model:
            t["W_enc"] = t["W_enc"].T.contiguous()  # stored (d_sae, d_model)
        if d_model is not None and "W_dec" in t and t["W_dec"].shape[1] != d_model:
            t["W_dec"] = t["W_dec"].T.contiguous()  # stored (d_model, d_sae)
        sparsity = "jumprelu" if "threshold" in t else "relu"
        d = _build("mlp", layer, t, sparsity, None, False, path)
        out.append(Dictionary(**{**_fields(d), "meta": {"source": str(path)}, "pre_ln": pre_ln}))
    return out


def resolve(name: str, download: bool = False) -> list[Dictionary]:
    """Every dictionary that `name` (bundled model name, folder, hub name) holds."""
    bundled = BUNDLED_DIR / name / "dictionaries"
    if "/" not in name and "\\" not in name and bundled.is_dir():
        return load_folder(bundled)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WorkbenchError(f"{name}: expected a folder of dictionaries, not a file")
        return load_folder(path)
    if name.startswith((".", "/", "~")) or name.count("/") == 0:
        bundled_names = sorted(p.parent.name for p in BUNDLED_DIR.glob("*/dictionaries"))
        raise WorkbenchError(f"{name}: no such folder and no bundled dictionaries by that name "
                             f"(bundled: {', '.join(bundled_names) or 'none'})")
    return load_folder(hub_folder(name, download))


def load_folder(folder: Path) -> list[Dictionary]:
    """One SAELens dictionary, a folder of them (one per sub-folder), or circuit-tracer."""
    if (folder / CFG).is_file():
        return [load_saelens(folder)]
    if (folder / CT_CONFIG).is_file() or any(folder.glob("layer_*.safetensors")):
        return load_circuit_tracer(folder)
    subs = sorted(p for p in folder.iterdir() if (p / CFG).is_file())
    if not subs:
        raise WorkbenchError(f"{folder}: no dictionaries here (expected {CFG} + {WEIGHTS}, "
                             f"sub-folders of them, or circuit-tracer's {CT_CONFIG})")
    return [load_saelens(p) for p in subs]


def hub_folder(name: str, download: bool = False) -> Path:
    """`owner/repo[/sub/folder]` through huggingface_hub: the local cache unless `download`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    parts = name.strip("/").split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = [f"{sub}/*" if sub else "*", f"{sub}/**" if sub else "**"]
    try:
        root = snapshot_download(repo, allow_patterns=patterns, local_files_only=not download)
    except (LocalEntryNotFoundError, OSError, ValueError):
        hint = "" if download else "; add download=yes to fetch it from the hub"
        raise WorkbenchError(f"{name}: not a folder and not in the local Hugging Face "
                             f"cache{hint}") from None
    except Exception as exc:  # network and hub errors come in many types
        raise WorkbenchError(f"could not download {name!r}: {exc}".splitlines()[0]) from None
    folder = Path(root) / sub
    if not folder.is_dir():
        raise WorkbenchError(f"{name}: the hub snapshot has no folder {sub!r}")
    return folder


# -- helpers ----------------------------------------------------------------------------------


def _fields(d: Dictionary) -> dict[str, Any]:
    return {f: getattr(d, f) for f in d.__dataclass_fields__}


def _build(site: SiteName, layer: int, t: dict[str, torch.Tensor], sparsity: str,
           k: int | None, apply_b_dec: bool, path: Path) -> Dictionary:
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in t]
    if sparsity == "jumprelu" and "threshold" not in t:
        missing.append("threshold")
    if missing:
        raise WorkbenchError(f"{path}: missing tensor {missing[0]} "
                             f"(has {', '.join(sorted(t)) or 'none'})")
    try:
        return Dictionary(site=site, layer=layer, W_enc=t["W_enc"].float(),
                          b_enc=t["b_enc"].float(), W_dec=t["W_dec"].float(),
                          b_dec=t["b_dec"].float(), sparsity=sparsity,  # type: ignore[arg-type]
                          k=k, threshold=t["threshold"].float() if "threshold" in t else None,
                          apply_b_dec_to_input=apply_b_dec)
    except WorkbenchError as exc:
        raise WorkbenchError(f"{path}: {exc}") from None


def _site_of(name: Any, where: str) -> tuple[Site, int | None]:
    parsed = parse_hook_name(str(name)) if isinstance(name, str) else None
    if parsed is None or parsed[1] is None:
        raise WorkbenchError(f"{where}: hook_name {name!r} is not a per-layer hook point "
                             "like blocks.0.hook_attn_out")
    return parsed


def _local(folder: Path, spec: str, config: Path) -> Path:
    if spec.startswith("hf://"):
        repo_path = spec[5:]
        parts = repo_path.split("/")
        base = hub_folder("/".join(parts[:2]), download=False)
        path = base / "/".join(parts[2:])
    else:
        path = (folder / spec) if not Path(spec).is_absolute() else Path(spec)
    if not path.is_file():
        raise WorkbenchError(f"{config}: transcoder file {spec} not found")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkbenchError(f"cannot read {path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: expected a JSON object")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return dict(load_file(str(path)))
    except FileNotFoundError:
        raise WorkbenchError(f"cannot read {path}: file not found") from None
    except (OSError, SafetensorError) as exc:
        raise WorkbenchError(f"cannot read {path}: not a safetensors file ({exc})") from None
