"""Tiny chat models for the demo and the tests, built on the fly (no download).

Three tokenizer families, trained with the `tokenizers` library on the synthetic chat data:

- ``byte_level``: byte-level BPE with Qwen2's pre-tokenizer (digits one by one, NFC)
- ``metaspace``: BPE with the SentencePiece ``▁`` marker and byte fallback (Llama-2 / Mistral)
- ``unigram``: a Unigram model with ``▁`` (T5 / XLNet style)

and three architectures from `transformers` configs with random init (Llama, Qwen2, GPT-2),
small enough to train on a laptop CPU in seconds. ``train_chat_model`` fine-tunes one with
plain cross-entropy on assistant tokens (the same supervision the pipeline uses).
Needs torch, transformers and tokenizers (``pip install fusechat[torch]``).
"""
import logging
import os

import numpy as np

from ..stages import chat
from . import data as demo_data
from ..progress import tqdm

LOG = logging.getLogger(__name__)

SPECIALS = ["<unk>", "<s>", "</s>", "<|end_of_turn|>"]
TOKENIZER_KINDS = ("byte_level", "metaspace", "unigram")
# Qwen2's published pre-tokenizer split. transformers (5.x) loads any folder whose config says
# model_type "qwen2" as Qwen2Tokenizer, which rebuilds the pipeline around the saved vocab and
# merges with this split and NFC, ignoring tokenizer.json's own: a byte-level BPE with another
# split then tokenizes differently once saved and reloaded (see save()).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
ARCHITECTURES = ("llama", "qwen2", "gpt2")


def _corpus(n, seed):
    texts = []
    for rec in demo_data.make_dataset(n, seed=seed):
        texts += [m["content"] for m in rec["messages"]]
    # the template words, so that every tokenizer has them as a few pieces
    texts += ["GPT4 Correct User: GPT4 Correct Assistant:"] * 50
    return texts


def train_tokenizer(kind, vocab_size=400, seed=0):
    """A transformers fast tokenizer of the given kind, trained on synthetic chat text."""
    from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)
    from transformers import PreTrainedTokenizerFast

    texts = _corpus(2000, seed)
    if kind == "byte_level":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer)
        bos = None  # GPT-2 / Qwen style: no BOS
    elif kind == "metaspace":
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        bytes_ = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, show_progress=False,
                                      special_tokens=SPECIALS + bytes_)
        tok.train_from_iterator(texts, trainer)
        bos = "<s>"
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                          unk_token="<unk>", show_progress=False)
        tok.train_from_iterator(texts, trainer)
        bos = "<s>"
    else:
        raise ValueError(f"kind={kind!r}: expected one of {TOKENIZER_KINDS}")
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="</s>",
                                   unk_token="<unk>", pad_token="<unk>")


def build_model(arch, tokenizer, *, hidden=64, layers=2, heads=4, seed=0):
    """A randomly initialised causal LM of the given architecture for this tokenizer."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(seed)
    vocab_size = len(tokenizer)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    # Llama and Qwen2 take the same config fields (grouped-query attention, untied head)
    decoder = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 3,
                   num_hidden_layers=layers, num_attention_heads=heads,
                   num_key_value_heads=heads // 2, max_position_embeddings=256,
                   tie_word_embeddings=False, **ids)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**decoder))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**decoder))
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                         n_positions=256, **ids)
        model = GPT2LMHeadModel(cfg)
        model.loss_type = "ForCausalLM"  # transformers cannot tell it from the class name
        return model
    raise ValueError(f"arch={arch!r}: expected one of {ARCHITECTURES}")


def batches(tokenized, batch_size, rng, pad_id):
    """Shuffled padded batches: (input_ids [B, L] long, labels [B, L] long with -100)."""
    import torch

    order = rng.permutation(len(tokenized))
    for start in range(0, len(order), batch_size):
        group = [tokenized[i] for i in order[start:start + batch_size]]
        width = max(len(t.input_ids) for t in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        attn = torch.zeros((len(group), width), dtype=torch.long)
        for b, t in enumerate(group):
            n = len(t.input_ids)
            ids[b, :n] = torch.as_tensor(t.input_ids, dtype=torch.long)
            attn[b, :n] = 1
            lab = torch.as_tensor(t.input_ids, dtype=torch.long).clone()
            lab[torch.as_tensor(t.loss_mask == 0)] = -100
            labels[b, :n] = lab
        yield ids, attn, labels


def train_chat_model(model, tokenizer, records, *, epochs=3, batch_size=32, lr=3e-3, seed=0,
                     template="openchat_3.5", quiet=False, desc="train"):
    """Plain-CE fine-tuning on the assistant tokens of chat records. Returns mean loss of the
    last epoch."""
    import torch

    convs, _ = chat.load_conversations(records)
    sep = chat.end_of_turn_token(tokenizer) if template == "openchat_3.5" else None
    data = [chat.tokenize(c, tokenizer, template=template, sep=sep) for c in convs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    last = float("nan")
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    with tqdm(total=steps, desc=desc, disable=quiet) as bar:
        for _ in range(epochs):
            losses = []
            for ids, attn, labels in batches(data, batch_size, rng, tokenizer.pad_token_id):
                out = model(input_ids=ids, attention_mask=attn, labels=labels)
                opt.zero_grad()
                out.loss.backward()
                opt.step()
                losses.append(out.loss.item())
                bar.update(1)
            last = float(np.mean(losses))
    model.eval()
    return last


def save(model, tokenizer, path):
    """Save as a Hugging Face folder (safetensors weights, tokenizer files). Raises
    RuntimeError if ``AutoTokenizer`` does not load back a tokenizer that gives the same ids
    on the demo's chat text (the pipeline loads it that way; a model evaluated or distilled
    under another tokenization than it was trained with scores as noise)."""
    from transformers import AutoTokenizer

    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    reloaded = AutoTokenizer.from_pretrained(path)
    for text in _roundtrip_texts():
        want, got = tokenizer(text)["input_ids"], reloaded(text)["input_ids"]
        if want != got:
            raise RuntimeError(
                f"{path}: AutoTokenizer loads {type(reloaded).__name__}, which tokenizes "
                f"{text!r} as {reloaded.convert_ids_to_tokens(got)} instead of "
                f"{tokenizer.convert_ids_to_tokens(want)}")


def _roundtrip_texts():
    convs, _ = chat.load_conversations(demo_data.make_dataset(30, seed=0))
    return [chat.render(c, None, sep="</s>")[0] for c in convs]
