"""Tokenizers trained in the tests with the `tokenizers` library (no download), wrapped as
transformers fast tokenizers: byte-level BPE (GPT-2 / Llama-3 style) and Metaspace BPE with
byte fallback (Llama-2 / Mistral style)."""
from fusechat import demo_data

SPECIALS = ["<s>", "</s>", "<unk>", "<|end_of_turn|>"]


def corpus(n=400, seed=0):
    out = []
    for rec in demo_data.make_dataset(n, seed=seed):
        for m in rec["messages"]:
            out.append(m["content"])
    out += ["GPT4 Correct User: GPT4 Correct Assistant: What is the capital of"] * 20
    return out


def byte_level_bpe(vocab_size=400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<unk>")


def metaspace_bpe(vocab_size=300):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=specials)
    tok.train_from_iterator(corpus(seed=1), trainer)
    from tokenizers import processors
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<unk>")
