"""fusechat.Vocab against the `tokenizers`/`transformers` libraries on real tokenizers."""
import json
import os

import pytest

tokenizers = pytest.importorskip("tokenizers")

import align_fixtures as F  # noqa: E402
from fusechat import TokenizerError, Vocab  # noqa: E402

KINDS = ["bytelevel", "unigram", "mistral", "wordpiece"]


def folder(kind):
    return {"bytelevel": F.bytelevel_bpe, "unigram": F.unigram, "mistral": F.mistral,
            "wordpiece": F.wordpiece}[kind]()


@pytest.fixture(scope="module", params=KINDS)
def loaded(request):
    path = folder(request.param)
    tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    return request.param, Vocab.from_pretrained(path), tok


def lossy(b):
    return b.decode("utf-8", errors="replace")


def test_pieces_and_decode_match_tokenizers(loaded):
    kind, v, tok = loaded
    assert len(v) == tok.get_vocab_size(with_added_tokens=True)
    for i in range(len(v)):
        assert v.piece(i) == tok.id_to_token(i), i
        assert v.decoded(i) == tok.decode([i], skip_special_tokens=False), (i, v.piece(i))


def test_mistral_decode_matches_transformers():
    tok = F.mistral_tokenizer()
    v = Vocab.from_tokenizer(tok)
    for i in range(len(v)):
        assert v.decoded(i) == tok.decode([i]), (i, v.piece(i))
    assert v.roles == {"bos": 1, "eos": 2, "unk": 0, "pad": None, "eot": 2}
    assert v.fingerprint == Vocab.from_pretrained(F.mistral()).fingerprint


def test_canonical_bytes_agree_with_the_decoder(loaded):
    """Canonical bytes = what the tokenizer's own decoder makes of the token after a
    context token (so no first-token rule applies), byte pieces compared after UTF-8."""
    from tokenizers import decoders

    kind, v, tok = loaded
    if kind == "wordpiece":
        dec = decoders.WordPiece(prefix="##", cleanup=False)
    else:
        dec = tok.decoder
    ctx = {"bytelevel": "a", "unigram": "▁a", "mistral": "▁a", "wordpiece": "a"}[kind]
    ctx_text = dec.decode([ctx])
    checked = 0
    for i in range(len(v)):
        if v.is_special(i):
            assert v.canonical(i) == b""
            continue
        got = dec.decode([ctx, v.piece(i)])
        assert got.startswith(ctx_text)
        want = got[len(ctx_text):]
        can = v.canonical(i)
        try:
            assert can.decode("utf-8") == want, (i, v.piece(i))
        except UnicodeDecodeError:  # a lone byte of a multi-byte character
            assert lossy(can) == want, (i, v.piece(i))
        checked += 1
    assert checked > 0.9 * len(v)


def test_bytelevel_canonical_is_gpt2_byte_table():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    inverse = {c: b for b, c in bytes_to_unicode().items()}
    v = Vocab.from_pretrained(F.bytelevel_bpe())
    for i in range(len(v)):
        if not v.is_special(i):
            assert v.canonical(i) == bytes(inverse[c] for c in v.piece(i))


@pytest.mark.parametrize("kind", ["bytelevel", "mistral", "unigram"])
def test_encoding_concatenates_to_the_text(kind):
    """Lossless tokenizers: the canonical bytes of an encoding spell the text (after the
    dummy-prefix space of SentencePiece-style tokenizers)."""
    path = folder(kind)
    v = Vocab.from_pretrained(path)
    tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    unk = v.roles["unk"]
    for text in F.sample_texts():
        ids = tok.encode(text, add_special_tokens=False).ids
        if unk is not None and unk in ids:
            continue  # characters the small trained model never saw
        got = v.canonical_text(ids)
        want = text.encode("utf-8")
        if v.adds_prefix_space:
            assert got == b" " + want
        else:
            assert got == want


def test_wordpiece_canonical_spells_the_normalized_words():
    v = Vocab.from_pretrained(F.wordpiece())
    tok = tokenizers.Tokenizer.from_file(os.path.join(F.wordpiece(), "tokenizer.json"))
    enc = tok.encode("unaffable tokenization works", add_special_tokens=False)
    assert v.canonical_text(enc.ids) == b" unaffable tokenization works"
    assert v.marker == "##" and v.style == "wordpiece"
    assert v.roles["unk"] == tok.token_to_id("[UNK]") and v.roles["pad"] == 0


def test_from_tokenizer_object_equals_folder():
    path = F.bytelevel_bpe()
    a = Vocab.from_pretrained(path)
    b = Vocab.from_tokenizer(tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json")))
    assert a.fingerprint == b.fingerprint
    assert a.roles["eos"] == a.find("<|endoftext|>") and a.roles["eot"] == a.find("<|im_end|>")
    assert b.roles["eos"] is None  # a bare tokenizers object has no config


def test_fingerprints_differ():
    assert Vocab.from_pretrained(F.unigram()).fingerprint != \
        Vocab.from_pretrained(F.bytelevel_bpe()).fingerprint


# -- malformed files ---------------------------------------------------------------------

def base_json():
    with open(os.path.join(F.bytelevel_bpe(), "tokenizer.json"), encoding="utf-8") as f:
        return json.load(f)


def write(tmp_path, obj, raw=None):
    p = tmp_path / "tokenizer.json"
    p.write_bytes(raw if raw is not None else json.dumps(obj).encode())
    return tmp_path


def test_both_merge_spellings(tmp_path):
    j = base_json()
    merges = j["model"]["merges"]
    as_pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    as_strings = [" ".join(m) for m in as_pairs]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    j["model"]["merges"] = as_pairs
    a = Vocab.from_pretrained(write(tmp_path / "a", j))
    j["model"]["merges"] = as_strings
    b = Vocab.from_pretrained(write(tmp_path / "b", j))
    assert a.fingerprint == b.fingerprint


CASES = [
    ("bpe_no_merges", "model.merges", lambda j: j["model"].__setitem__("merges", [])),
    ("bpe_merges_missing", "model.merges", lambda j: j["model"].pop("merges")),
    ("bpe_bad_merge", "model.merges", lambda j: j["model"]["merges"].__setitem__(0, "abc")),
    ("bpe_bad_merge", "model.merges", lambda j: j["model"]["merges"].__setitem__(0, ["a"])),
    ("bpe_merge_unknown_piece", "model.merges[0]",
     lambda j: j["model"]["merges"].__setitem__(0, "zzqq ww")),
    ("model_unsupported", "model.type", lambda j: j["model"].__setitem__("type", "WordLevel")),
    ("model_missing", "model", lambda j: j.pop("model")),
    ("vocab_not_object", "model.vocab", lambda j: j["model"].__setitem__("vocab", [1, 2])),
    ("vocab_bad_id", "model.vocab", lambda j: j["model"]["vocab"].__setitem__("a", -3)),
    ("vocab_bad_id", "model.vocab", lambda j: j["model"]["vocab"].__setitem__("a", 1.5)),
    ("vocab_duplicate_id", "model.vocab", lambda j: j["model"]["vocab"].__setitem__("a", 5)),
    ("vocab_empty", "model.vocab", lambda j: j["model"].__setitem__("vocab", {})),
    ("added_token_bad_id", "added_tokens", lambda j: j["added_tokens"][0].pop("id")),
    ("added_token_bad_content", "added_tokens",
     lambda j: j["added_tokens"][0].__setitem__("content", 7)),
    ("decoder_unsupported", "decoder", lambda j: j.__setitem__("decoder", {"type": "CTC"})),
    ("decoder_unsupported", "decoder.pattern",
     lambda j: j.__setitem__("decoder", {"type": "Replace", "pattern": {"Regex": "x"},
                                         "content": " "})),
]


@pytest.mark.parametrize("rule,field,fn", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_malformed_names_file_and_field(tmp_path, rule, field, fn):
    j = base_json()
    fn(j)
    with pytest.raises(TokenizerError) as e:
        Vocab.from_pretrained(write(tmp_path, j))
    assert e.value.rule == rule
    assert e.value.filename.endswith("tokenizer.json")
    assert field in str(e.value) and "tokenizer.json" in str(e.value)


@pytest.mark.parametrize("raw,rule", [(b"{", "tokenizer_not_json"),
                                      (b"\xff{}", "tokenizer_not_utf8"),
                                      (b"[" * 100 + b"]" * 100, "tokenizer_too_deep"),
                                      (b"[]", "model_missing")])
def test_not_a_tokenizer(tmp_path, raw, rule):
    with pytest.raises(TokenizerError) as e:
        Vocab.from_pretrained(write(tmp_path, None, raw))
    assert e.value.rule == rule


def test_bad_config_and_missing_files(tmp_path):
    write(tmp_path, base_json())
    (tmp_path / "tokenizer_config.json").write_text("[1]")
    with pytest.raises(TokenizerError) as e:
        Vocab.from_pretrained(tmp_path)
    assert e.value.filename.endswith("tokenizer_config.json")
    with pytest.raises(FileNotFoundError):
        Vocab.from_pretrained(tmp_path / "nope")
    os.unlink(tmp_path / "tokenizer.json")
    with pytest.raises(OSError):
        Vocab.from_pretrained(tmp_path)


def test_marker_override_and_errors():
    v = Vocab.from_pretrained(F.unigram(), marker="Ġ")
    assert v.marker == "Ġ"
    with pytest.raises(ValueError):
        Vocab.from_pretrained(F.unigram(), marker="")
    with pytest.raises(IndexError):
        v.piece(len(v))


def test_mistral_decode_matches_sentencepiece_slow_path():
    """The reference decoded with slow (sentencepiece) tokenizers. Every non-special id agrees
    with sentencepiece except <0x20>: the fast decoder chain strips the space it decodes to
    (its Strip step), sentencepiece keeps it; encodings use '▁' for spaces, not <0x20>."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(
        model_file=os.path.join(F.package_dir("mistral_common"), "data", "tokenizer.model.v1"))
    v = Vocab.from_pretrained(F.mistral())
    differ = [v.piece(i) for i in range(len(v))
              if not v.is_special(i) and v.decoded(i) != sp.decode([i])]
    assert differ == ["<0x20>"]


def test_llama2_legacy_normalizer_format(tmp_path):
    """Llama-2's older tokenizer.json: no pre-tokenizer, a normalizer that prepends '▁' and
    turns spaces into '▁' (the style is found from the normalizer)."""
    with open(os.path.join(F.mistral(), "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    j["pre_tokenizer"] = None
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(j), encoding="utf-8")
    v = Vocab.from_pretrained(tmp_path)
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert v.style == "metaspace" and v.adds_prefix_space and v.marker == "▁"
    for i in range(0, len(v), 7):
        assert v.decoded(i) == tok.decode([i], skip_special_tokens=False)
    for text in F.MULTILINGUAL:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert v.canonical_text(ids) == b" " + text.encode("utf-8")
