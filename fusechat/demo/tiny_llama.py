"""A tiny Llama-shaped checkpoint built with NumPy (no torch): the tensor names and shapes of
Hugging Face's LlamaForCausalLM (grouped-query attention, SwiGLU MLP, RMSNorm, untied lm_head),
bf16, with a config.json as LlamaConfig writes it. Used by the tests and benchmarks of the
checkpoint I/O and merging code (it was the foundation's demo).
"""
import json
import os

import ml_dtypes
import numpy as np

from .. import safetensors as st

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


def llama_shapes(cfg):
    """{name: shape} of LlamaForCausalLM's parameters for config dict ``cfg``."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        })
    shapes["model.norm.weight"] = (h,)
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def build_tiny_llama(cfg=TINY_LLAMA, seed=0):
    """Random bf16 weights (normal, std = initializer_range; norms at 1) for ``cfg``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in llama_shapes(cfg).items():
        if name.endswith("norm.weight"):
            w = np.ones(shape, np.float32)
        else:
            w = rng.normal(0.0, cfg["initializer_range"], size=shape).astype(np.float32)
        out[name] = w.astype(ml_dtypes.bfloat16)
    return out


def write_checkpoint(folder, tensors, cfg, max_shard_size):
    st.save(tensors, folder, metadata={"format": "pt"}, max_shard_size=max_shard_size,
            overwrite=True)
    tmp = os.path.join(folder, ".config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(folder, "config.json"))


def round_trip(src_folder, out_file):
    """Stream every tensor of src_folder through float32 and back to bf16 into out_file."""
    with st.open(src_folder) as f:
        entries = [(k, f.info(k).dtype, f.info(k).shape) for k in f.keys()]
        with st.Writer(out_file, entries, metadata=f.metadata, overwrite=True) as w:
            for name, _, _ in entries:
                w32 = f.get(name, dtype=np.float32)
                w.write(name, w32.astype(ml_dtypes.bfloat16))
