"""The engine: one fused forward with every intervention, and the API techniques use.

- `engine.forward`: the fused forward over folded weights (`Forward`, `Patch`, `Activations`);
- `engine.mixing`: edge mixing (restart `State`, delta buffers, the mixing GEMMs);
- `engine.gradients`: hand-written receiver-input gradients (`Capture`, LayerNorm backward);
- `engine.api`: `EngineAPI`, the one surface techniques are written against.
The ablation engine (`workbench.ablation`) caches a prompt set's runs on top of `engine.forward`.
Nothing is imported here, so importing a submodule stays cheap.
"""
