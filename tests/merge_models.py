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


def write_llama(path, tensors, vocab, dtype_name, specials=(), chat_template=None):
    """A Llama folder; specials: special tokens taking the last ids of the vocabulary;
    chat_template: written into tokenizer_config.json."""
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
    words = (["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)])[
        :vocab - len(specials)] + list(specials)
    added = [{"id": vocab - len(specials) + i, "content": t, "single_word": False,
              "lstrip": False, "rstrip": False, "normalized": False, "special": True}
             for i, t in enumerate(specials)]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
           "decoder": None,
           "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)},
                     "unk_token": "<unk>"}}
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
          "bos_token": "<s>", "eos_token": "</s>"}
    if chat_template:
        tc["chat_template"] = chat_template
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f)


def make_family(root, n_targets, dtype=np.float32, vocab=100, seed=0, target_vocab=None,
                **tokenizer):
    """A base ("pivot") and n_targets fine-tuned variants (base + scaled noise). Returns
    (base_path, [target paths]). target_vocab: per-target vocabulary sizes (default vocab);
    tokenizer: write_llama's specials and chat_template."""
    import ml_dtypes

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    dname = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[np_dtype.name]
    rng = np.random.default_rng(seed)
    base = {k: (rng.standard_normal(s) * 0.05).astype(np.float32)
            for k, s in llama_shapes(vocab).items()}
    base_path = os.path.join(root, "base")
    write_llama(base_path, {k: v.astype(np_dtype) for k, v in base.items()}, vocab, dname,
                **tokenizer)
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
        write_llama(p, t, v, dname, **tokenizer)
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


# the scale alpha / r of each module hand_adapter adapts
HAND_ADAPTER_SCALES = {"model.layers.0.self_attn.q_proj": 6 / 4,
                       "model.layers.1.mlp.down_proj": 5 / 2}


def hand_adapter(folder, base_tensors, rng, fan_in_fan_out=False, std=1.0):
    """q_proj of layer 0 (r 4, alpha 6) and down_proj of layer 1 (rank_pattern 2,
    alpha_pattern 5), stored transposed when fan_in_fan_out; A and B drawn with this std."""
    q = base_tensors["model.layers.0.self_attn.q_proj.weight"].shape
    d = base_tensors["model.layers.1.mlp.down_proj.weight"].shape
    if fan_in_fan_out:
        q, d = q[::-1], d[::-1]
    t = {}
    for mod, (out, inp), r in (("model.layers.0.self_attn.q_proj", q, 4),
                               ("model.layers.1.mlp.down_proj", d, 2)):
        t[f"{LORA_PREFIX}{mod}.lora_A.weight"] = (rng.standard_normal((r, inp)) * std
                                                  ).astype(np.float32)
        t[f"{LORA_PREFIX}{mod}.lora_B.weight"] = (rng.standard_normal((out, r)) * std
                                                  ).astype(np.float32)
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


# the models and adapters the configs in examples/merge/ name, relative to the directory
# they are run from
V2 = ["OpenChat-3.5-7B-Mixtral-v2.0", "OpenChat-3.5-7B-InternLM-v2.0",
      "OpenChat-3.5-7B-Qwen-v2.0", "OpenChat-3.5-7B-Starling-v2.0", "OpenChat-3.5-7B-SOLAR-v2.0"]
V1 = ["OpenChat-3.5-7B-Mixtral", "OpenChat-3.5-7B-Solar"]
PIVOT = "openchat_3.5"
ADAPTER = "OpenChat-3.5-7B-Starling-v2.0-lora"
EOT = "<|end_of_turn|>"
# OpenChat-3.5's published chat format
OPENCHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                     "{{ 'GPT4 Correct ' + (message['role'] | capitalize) + ': ' + "
                     "message['content'] + '<|end_of_turn|>' }}{% endfor %}"
                     "{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}")


def make_zoo(root, dtype, seed):
    """root/models/ with the pivot, the v2 and v1 targets (symlinks into root/fam), their
    tokenizers ending in <|end_of_turn|> and carrying OpenChat's template, and
    root/adapters/ADAPTER, a PEFT LoRA adapter of the pivot (hand_adapter, std 0.05: deltas
    of the targets' size). Returns root."""
    import safetensors.numpy

    base, targets = make_family(os.path.join(root, "fam"), 5, dtype, seed=seed,
                                specials=[EOT], chat_template=OPENCHAT_TEMPLATE)
    models = os.path.join(root, "models")
    os.makedirs(models)
    os.symlink(base, os.path.join(models, PIVOT))
    for name, t in list(zip(V2, targets)) + list(zip(V1, targets[:2])):
        os.symlink(t, os.path.join(models, name))
    hand_adapter(os.path.join(root, "adapters", ADAPTER), safetensors.numpy.load_file(
        os.path.join(base, "model.safetensors")), np.random.default_rng(seed), std=0.05)
    return root
