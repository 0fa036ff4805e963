"""One hand-made corrupt file per rejection rule (docs/formats.md): the reader refuses it with
SafetensorsError (a ValueError) whose message names the file and the rule, and whose .rule
and .filename are set. Where the rule is also one of the format's own (README "Format" of
huggingface/safetensors), the `safetensors` package must refuse the same file: an independent
check that the file really is corrupt, not just unusual."""
import json
import os
import re

import pytest

import fusechat
from fusechat import safetensors as st
from st_files import entry, write

E = entry
U8_1 = E("U8", [1], 0, 1)

# (rule, header, data, the safetensors package refuses it too)
HEADER_CASES = [
    ("file_too_small", None, b"\x01\x00\x00", True),
    ("header_too_large", "LEN:100000001", b"{}", True),
    ("header_out_of_file", "LEN:64", b"{}", True),
    ("header_not_utf8", b'{"a\xff":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0", True),
    ("header_not_utf8", b'\xef\xbb\xbf{}', b"", True),
    ("header_not_json", '{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}', b"\0", True),
    ("header_not_json", '{"a":' + json.dumps(U8_1) + '} {}', b"\0", True),
    ("header_not_object", "[1, 2]", b"", True),
    ("header_too_deep", '{"a": {"dtype": [[["U8"]]]}}', b"", True),
    ("duplicate_key", '{"a":' + json.dumps(U8_1) + ',"a":' + json.dumps(E("U8", [1], 1, 2)) + "}",
     b"\0\0", True),
    ("duplicate_key", '{"a":{"dtype":"U8","shape":[1],"shape":[1],"data_offsets":[0,1]}}', b"\0",
     True),
    ("duplicate_key", '{"__metadata__":{"k":"1","k":"2"}}', b"", False),  # a HashMap
    ("bad_metadata", {"__metadata__": {"k": 1}}, b"", True),
    ("bad_metadata", {"__metadata__": "k"}, b"", True),
    ("bad_entry", {"a": [1]}, b"", True),
    ("bad_entry", {"a": {"dtype": "U8", "shape": [1]}}, b"\0", True),
    ("bad_entry", {"a": {**U8_1, "extra": 1}}, b"\0", False),  # serde ignores unknown fields
    ("unknown_dtype", {"a": E("Q8", [1], 0, 1)}, b"\0", True),
    ("unknown_dtype", {"a": E("f32", [1], 0, 4)}, b"\0" * 4, True),
    ("bad_shape", {"a": E("U8", [-1], 0, 1)}, b"\0", True),
    ("bad_shape", {"a": E("U8", [1.5], 0, 1)}, b"\0", True),
    ("bad_shape", '{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', b"\0", True),
    ("bad_shape", '{"a":{"dtype":"U8","shape":[9007199254740993,0],"data_offsets":[0,0]}}', b"",
     False),  # above the schema's integers; the Rust reader takes any u64
    ("bad_offsets", {"a": E("U8", [1], 1, 0)}, b"\0", True),
    ("bad_offsets", {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}, b"\0", True),
    ("bad_offsets", '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1e0]}}', b"\0", True),
    ("size_overflow", {"a": E("U8", [2**53, 2**53, 2**53], 0, 1)}, b"\0", True),
    ("size_overflow", {"a": E("U64", [4294967296, 4294967296], 0, 8)}, b"\0" * 8, True),
    ("size_mismatch", {"a": E("F32", [2], 0, 4)}, b"\0" * 4, True),
    ("offsets_not_contiguous", {"a": E("U8", [1], 1, 2)}, b"\0\0", True),
    ("offsets_not_contiguous", {"a": E("U8", [2], 0, 2), "b": E("U8", [2], 1, 3)}, b"\0" * 3, True),
    ("buffer_size_mismatch", {"a": U8_1}, b"\0extra_bogus_data_for_polyglot_file", True),
    ("buffer_size_mismatch", {"a": E("U8", [4], 0, 4)}, b"\0\0", True),
]


def _write_case(path, header, data):
    if header is None:
        path.write_bytes(data)
    elif isinstance(header, str) and header.startswith("LEN:"):
        write(path, data, length=int(header[4:]))  # a header length that lies
    else:
        write(path, header, data)
    return str(path)


@pytest.mark.parametrize("rule,header,data,ref", HEADER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(HEADER_CASES)])
def test_header_rule(tmp_path, rule, header, data, ref):
    path = _write_case(tmp_path / "bad.safetensors", header, data)
    before = open(path, "rb").read()
    with pytest.raises(fusechat.SafetensorsError) as info:
        st.open(path)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert exc.rule == rule, str(exc)
    assert exc.filename == path
    assert path in str(exc) and rule in str(exc)
    assert open(path, "rb").read() == before  # inputs are never modified
    if ref:
        from safetensors import safe_open
        with pytest.raises(Exception):
            with safe_open(path, "np") as f:
                [f.get_tensor(k) for k in f.keys()]


def test_header_rule_names_the_tensor(tmp_path):
    path = write(tmp_path / "t.safetensors", {"ok": E("U8", [1], 0, 1),
                                             "bad.tensor": E("BF16", [3], 1, 5)}, b"\0" * 5)
    with pytest.raises(fusechat.SafetensorsError, match=r"'bad.tensor'.*6") as info:
        st.open(path)
    assert info.value.rule == "size_mismatch"


def test_every_documented_rule_has_a_case():
    """The header comment of fc_safetensors.h lists the rules; each has a file here."""
    header = open(os.path.join(os.path.dirname(__file__), "..", "csrc", "include",
                               "fc_safetensors.h")).read()
    doc = header.split("Rules:")[1].split("*/")[0]
    rules = set(re.findall(r"^ \*   ([a-z][a-z0-9]*_[a-z0-9_]+) ", doc, re.M))
    assert len(rules) >= 25, rules
    covered = {c[0] for c in HEADER_CASES} | {c[0] for c in INDEX_CASES}
    assert rules and rules <= covered, rules - covered


# ---------------------------------------------------------------------------------------
# index files

def _sharded(tmp_path):
    """Two valid shards: a in shard 1, b in shard 2."""
    d = tmp_path / "ckpt"
    d.mkdir()
    write(d / "model-00001-of-00002.safetensors", {"a": E("U8", [2], 0, 2)}, b"\1\2")
    write(d / "model-00002-of-00002.safetensors", {"b": E("U8", [1], 0, 1)}, b"\3")
    write(d / "copy.safetensors", {"a": E("U8", [2], 0, 2)}, b"\1\2")
    return d


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"

INDEX_CASES = [
    ("index_not_utf8", b'{"weight_map": {"a": "\xff"}}'),
    ("index_not_json", '{"weight_map": {"a": "x"}'),
    ("index_not_json", "[]"),
    ("index_too_deep", '{"metadata": {"x": %s1%s}, "weight_map": {"a": "%s"}}'
     % ("[" * 16, "]" * 16, S1)),
    ("duplicate_key", '{"weight_map": {"a": "%s"}, "weight_map": {}}' % S1),
    ("index_bad_metadata", {"metadata": [1], "weight_map": {"a": S1}}),
    ("index_bad_weight_map", {"metadata": {}}),
    ("index_bad_weight_map", {"weight_map": []}),
    ("index_bad_weight_map", {"weight_map": {"a": 1}}),
    ("index_bad_weight_map", {"weight_map": {}}),
    ("index_bad_weight_map", '{"weight_map": {"a": "%s", "a": "%s"}}' % (S1, S1)),
    ("index_bad_filename", {"weight_map": {"a": "../ckpt/" + S1}}),
    ("index_bad_filename", {"weight_map": {"a": "/etc/passwd"}}),
    ("index_bad_filename", {"weight_map": {"a": "sub\\" + S1}}),
    ("index_bad_filename", {"weight_map": {"a": ".."}}),
    ("index_bad_filename", {"weight_map": {"a": ""}}),
    ("index_missing_shard", {"weight_map": {"a": "model-00009-of-00009.safetensors"}}),
    ("index_tensor_missing", {"weight_map": {"a": S1, "c": S2}}),
    ("index_tensor_missing", {"weight_map": {"a": S2, "b": S2}}),
    ("index_duplicate_tensor", {"weight_map": {"a": S1, "b": "copy.safetensors"}}),
]


@pytest.mark.parametrize("rule,index", INDEX_CASES, ids=[f"{c[0]}-{i}" for i, c in
                                                         enumerate(INDEX_CASES)])
def test_index_rule(tmp_path, rule, index):
    d = _sharded(tmp_path)
    index_path = d / "model.safetensors.index.json"
    if isinstance(index, dict):
        index = json.dumps(index)
    index_path.write_bytes(index.encode() if isinstance(index, str) else index)
    with pytest.raises(fusechat.SafetensorsError) as info:
        st.open(d)
    exc = info.value
    assert exc.rule == rule, str(exc)
    assert exc.filename == str(index_path)
    assert str(index_path) in str(exc) and rule in str(exc)


def test_index_shard_rule_names_the_shard(tmp_path):
    """A corrupt shard behind a valid index is named itself."""
    d = _sharded(tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": S1, "b": S2}}))
    write(d / S2, {"b": E("U8", [1], 0, 1)}, b"\3\4")
    with pytest.raises(fusechat.SafetensorsError) as info:
        st.open(d)
    assert info.value.rule == "buffer_size_mismatch"
    assert info.value.filename == str(d / S2)


def test_unlisted_tensors_warn(tmp_path, caplog):
    d = _sharded(tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": S1}}))
    # b is in shard 2, which the index does not name: not opened at all
    write(d / S1, {"a": E("U8", [2], 0, 2), "extra": E("U8", [1], 2, 3)}, b"\1\2\3")
    with caplog.at_level("WARNING", logger="fusechat.safetensors"):
        f = st.open(d)
    assert sorted(f.keys()) == ["a", "extra"]
    assert any("1 tensors" in r.getMessage() and "not listed" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------
# mutated files: never a crash, always either a valid file or a named rule

def _valid_image():
    import struct
    header = json.dumps({"__metadata__": {"format": "pt"}, "a": E("F32", [2, 2], 0, 16),
                         "b": E("BF16", [3], 16, 22), "c": E("U8", [0], 22, 22)},
                        separators=(",", ":")).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(22))


def test_mutated_headers_fail_cleanly():
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as s
    from fusechat import _C

    base = _valid_image()
    assert _C.st_check_header(base) == 3

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(s.lists(s.tuples(s.integers(0, len(base) - 1), s.integers(0, 255)),
                              min_size=1, max_size=4),
                      s.integers(0, 8))
    def check(edits, cut):
        data = bytearray(base)
        for pos, byte in edits:
            data[pos] = byte
        data = bytes(data[:len(data) - cut])
        try:
            n = _C.st_check_header(data, "m.safetensors")
        except fusechat.SafetensorsError as exc:
            assert exc.rule and "m.safetensors" in str(exc) and exc.rule in str(exc)
        else:
            assert 0 <= n <= 3

    check()


def test_mutated_indexes_fail_cleanly(tmp_path):
    """Random byte edits of a valid index: the folder opens, or a named rule is broken
    (SafetensorsError), or a file is missing (OSError); never anything else."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as s

    d = _sharded(tmp_path)
    index_path = d / "model.safetensors.index.json"
    base = json.dumps({"metadata": {"total_size": 3}, "weight_map": {"a": S1, "b": S2}}).encode()

    @hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
    @hypothesis.given(s.lists(s.tuples(s.integers(0, len(base) - 1), s.integers(0, 255)),
                              min_size=1, max_size=3))
    def check(edits):
        data = bytearray(base)
        for pos, byte in edits:
            data[pos] = byte
        index_path.write_bytes(bytes(data))
        try:
            f = st.open(d)
        except fusechat.SafetensorsError as exc:
            assert exc.rule and exc.rule in str(exc) and exc.filename
        except OSError as exc:
            assert exc.errno and exc.filename
        else:
            assert set(f.keys()) <= {"a", "b"}
            f.close()

    check()
