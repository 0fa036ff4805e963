"""Tiny random Llama checkpoints for the merge tests: real Hugging Face folders
(config.json, model.safetensors written by the safetensors package, a word-level
tokenizer.json, generation_config.json) that transformers and mergekit can load, PEFT
LoRA adapter folders for them, and a runner for mergekit (the oracle) on them."""
import json
import os

import numpy as np

HIDDEN, INTER, LAYERS, HEADS = 64, 96, 3, 4


def llama_shapes(vocab, hidden=HIDDEN, inter=INTER, layers=LAYERS):
    from fusechat.demo.tiny_llama import llama_shapes as shapes_of

    return shapes_of({"hidden_size": hidden, "intermediate_size": inter, "vocab_size": vocab,
                      "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
                      "num_hidden_layers": layers})


def write_llama(path, tensors, vocab, dtype_name):
    import safetensors.numpy

    os.makedirs(path, exist_ok=True)
    safetensors.numpy.save_file(tensors, os.path.join(path, "model.safetensors"),
                                metadata={"format": "pt"})
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
           "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": vocab,
           "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
           "torch_dtype": dtype_name, "bos_token_id": 1, "eos_token_id": 2}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
           "decoder": None,
           "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)},
                     "unk_token": "<unk>"}}
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
                   "bos_token": "<s>", "eos_token": "</s>"}, f)


def make_family(root, n_targets, dtype=np.float32, vocab=100, seed=0, target_vocab=None):
    """A base ("pivot") and n_targets fine-tuned variants (base + scaled noise). Returns
    (base_path, [target paths]). target_vocab: per-target vocabulary sizes (default vocab)."""
    import ml_dtypes

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    dname = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[np_dtype.name]
    rng = np.random.default_rng(seed)
    base = {k: (rng.standard_normal(s) * 0.05).astype(np.float32)
            for k, s in llama_shapes(vocab).items()}
    base_path = os.path.join(root, "base")
    write_llama(base_path, {k: v.astype(np_dtype) for k, v in base.items()}, vocab, dname)
    paths = []
    for j in range(n_targets):
        v = (target_vocab or [vocab] * n_targets)[j]
        t = {}
        for k, s in llama_shapes(v).items():
            b = base[k]
            if s != b.shape:  # a larger vocabulary: new rows of their own
                b = np.concatenate([b, (rng.standard_normal((s[0] - b.shape[0], s[1])) * 0.05)
                                    .astype(np.float32)])
            t[k] = (b + rng.standard_normal(s) * 0.01 * (1 + j)).astype(np_dtype)
        p = os.path.join(root, f"target{j}")
        write_llama(p, t, v, dname)
        paths.append(p)
    return base_path, paths


LORA_PREFIX = "base_model.model."


def write_adapter(folder, tensors, **config):
    """A PEFT LoRA adapter folder: adapter_config.json (defaults overridden by config) and,
    unless tensors is None, adapter_model.safetensors."""
    import safetensors.numpy

    os.makedirs(folder, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "fan_in_fan_out": False,
           "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}}
    cfg.update(config)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    if tensors is not None:
        safetensors.numpy.save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    return folder


def hand_adapter(folder, base_tensors, rng, fan_in_fan_out=False):
    """q_proj of layer 0 (r 4) and down_proj of layer 1 (rank_pattern 2), stored
    transposed when fan_in_fan_out."""
    q = base_tensors["model.layers.0.self_attn.q_proj.weight"].shape
    d = base_tensors["model.layers.1.mlp.down_proj.weight"].shape
    if fan_in_fan_out:
        q, d = q[::-1], d[::-1]
    t = {}
    for mod, (out, inp), r in (("model.layers.0.self_attn.q_proj", q, 4),
                               ("model.layers.1.mlp.down_proj", d, 2)):
        t[f"{LORA_PREFIX}{mod}.lora_A.weight"] = rng.standard_normal((r, inp)).astype(np.float32)
        t[f"{LORA_PREFIX}{mod}.lora_B.weight"] = rng.standard_normal((out, r)).astype(np.float32)
    return write_adapter(folder, t, r=4, lora_alpha=6, target_modules=["q_proj", "down_proj"],
                         rank_pattern={"down_proj": 2},
                         alpha_pattern={"layers.1.mlp.down_proj": 5},
                         fan_in_fan_out=fan_in_fan_out)


def run_mergekit(cfg, out, **options):
    """mergekit 0.1.5's merge of a config dict into folder out (options: MergeOptions'
    fields; the tokenizer is not copied unless copy_tokenizer=True)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              MergeOptions(**{"copy_tokenizer": False, "quiet": True, **options}))
