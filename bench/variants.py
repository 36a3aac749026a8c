"""Engine vs Hugging Face for every GPT-2 config variant of `tests/test_variants.py`.

    python bench/variants.py

For each variant (a random 3-layer checkpoint with sharp attention, built in a tmp dir) and
each dtype (float32, bfloat16): the engine's clean answer logits on 16 addition prompts against
(a) `transformers` on the unfolded checkpoint in float32, eager attention (max |difference| /
max |reference|, centred logits) and (b) the engine's own build-time check (the folded
reference model in the same dtype). Refused variants print their one-line refusal. Results go
to `bench/results/variants.json`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_variants import REFUSED, VARIANTS, build_variant, prompts  # noqa: E402
from workbench.ablation import AblationEngine  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.metrics import answer_logits  # noqa: E402
from workbench.model import load_model  # noqa: E402


def main() -> None:
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate({**VARIANTS, **{
                k: v[0] for k, v in REFUSED.items()}}.items()):
            directory = build_variant(Path(tmp) / f"v{i}", overrides if name not in REFUSED or
                                      name == "add_cross_attention" else {})
            if name in REFUSED and name != "add_cross_attention":
                cfg = json.loads((directory / "config.json").read_text())
                (directory / "config.json").write_text(json.dumps({**cfg, **overrides}))
            row = {}
            for dtype in ("float32", "bfloat16"):
                try:
                    model = load_model(str(directory), device="cpu", dtype=dtype)
                    engine = AblationEngine(model, prompts(model))
                except WorkbenchError as exc:
                    row[dtype] = {"refused": str(exc)}
                    continue
                hf = GPT2LMHeadModel.from_pretrained(str(directory),
                                                     attn_implementation="eager").eval()
                with torch.no_grad():
                    raw = hf(engine.enc.clean).logits
                ref = answer_logits(raw - raw.mean(-1, keepdim=True), engine.enc)
                err = float((engine.clean_logits.float() - ref).abs().max() / ref.abs().max())
                agree = float((engine.clean_logits.argmax(-1) == ref.argmax(-1)).float().mean())
                row[dtype] = {"vs_transformers_fp32": err, "build_check": engine.check_error,
                              "argmax_agreement": agree}
            rows[name] = row
            f32, bf16 = row["float32"], row["bfloat16"]
            if "refused" in f32:
                print(f"{name:<34} refused: {f32['refused']}")
            else:
                print(f"{name:<34} fp32 {f32['vs_transformers_fp32']:.1e} "
                      f"(check {f32['build_check']:.1e})  bf16 "
                      f"{bf16.get('vs_transformers_fp32', float('nan')):.1e} (check "
                      f"{bf16.get('build_check', float('nan')):.1e}, argmax "
                      f"{bf16.get('argmax_agreement', float('nan')):.3f})", flush=True)
    out = ROOT / "bench" / "results" / "variants.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
