"""`fusechat demo`: the whole pipeline on a synthetic chat dataset and tiny models, in minutes
on a CPU. ``run`` (the demo itself), ``data`` (the synthetic dataset), ``models`` (tiny
tokenizers and models trained for it), ``tiny_llama`` (a tiny Llama checkpoint in safetensors,
for the merge tests and benchmarks). Fixtures, not library API.
"""
