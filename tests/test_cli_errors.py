"""What a user sees when something is missing: an optional extra (torch, matplotlib), an input
path, or a file that is not what it should be; and the CLI's help. Each error is one line on
stderr, with the exit code docs/cli.md gives, and no traceback."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fusechat import cli
from fusechat.stages import chat
from fusechat import safetensors as st
from fusechat.errors import FormatError

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")

# `python -m fusechat ARGS` in a fresh interpreter where the named top-level packages cannot be
# imported, as after `pip install fusechat` without the extra that brings them
BLOCKED_RUN = """
import runpy, sys
blocked = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = ["fusechat"] + sys.argv[2:]
runpy.run_module("fusechat", run_name="__main__", alter_sys=True)
"""
TORCH_EXTRA = ("torch", "transformers", "tokenizers", "accelerate")


def run_without(blocked, args, cwd):
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(blocked), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def one_line_error(proc, *fragments):
    """The process failed with exit code 2 and one stderr line holding every fragment."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture()
def inputs(tmp_path):
    """An (empty) model folder, a one-record chat dataset, an (empty) store folder, a recipe."""
    (tmp_path / "model").mkdir()
    (tmp_path / "store").mkdir()
    rec = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant",
                                                              "content": "4"}]}
    (tmp_path / "data.jsonl").write_text("\n".join([json.dumps(rec)] * 8) + "\n")
    (tmp_path / "recipe.yaml").write_text(
        "pivot: ./model\nsources: [./model2]\ndataset: {path: data.jsonl}\noutput: out\n")
    (tmp_path / "model2").mkdir()
    return tmp_path


@pytest.mark.parametrize("args", [
    ["extract", "model", "data.jsonl", "out"],
    ["train", "model", "store", "out"],
    ["eval", "model", "--data", "data.jsonl"],
    ["run", "recipe.yaml"],
])
def test_a_command_without_the_torch_extra_names_it(inputs, args):
    line = one_line_error(run_without(TORCH_EXTRA, args, inputs),
                          f"fusechat {args[0]}: error:", "pip install 'fusechat[torch]'")
    assert re.search(r"needs (torch|transformers), which is not installed", line)


@pytest.mark.parametrize("blocked", [TORCH_EXTRA, ("matplotlib",)])
def test_the_demo_without_its_extra_names_it_before_any_work(inputs, blocked):
    proc = run_without(blocked, ["demo", "--quick", "--workdir", "w"], inputs)
    # the first of the demo's packages that is missing here (blocked, or not installed at all)
    missing = next(m for m in ("torch", "transformers", "matplotlib")
                   if m in blocked or importlib.util.find_spec(m) is None)
    one_line_error(proc, "fusechat demo: error:", f"needs {missing}",
                   "pip install 'fusechat[demo]'")
    assert not (inputs / "w").exists()


def test_a_missing_module_outside_the_extras_is_not_disguised(inputs):
    """Only the extras' packages get the install line; any other missing module is a bug
    and keeps its traceback."""
    proc = run_without(("fusechat.inspect",), ["inspect", "data.jsonl"], inputs)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "fusechat[" not in proc.stderr


@pytest.mark.parametrize("args, missing, what", [
    (["run", "nope.yaml"], "nope.yaml", "recipe not found"),
    (["eval", "/nope/x", "--data", "data.jsonl"], "/nope/x", "model folder not found"),
    (["eval", "model", "--data", "nope.jsonl"], "nope.jsonl", "dataset not found"),
    (["extract", "nope", "data.jsonl", "out"], "nope", "model folder not found"),
    (["extract", "model", "nope.jsonl", "out"], "nope.jsonl", "dataset not found"),
    (["train", "model", "nope", "out"], "nope", "store not found"),
    (["align", "nope", "store", "out", "--pivot-tokenizer", "model", "--source-tokenizer",
      "model"], "nope", "pivot store not found"),
    (["fuse", "store", "nope", "out"], "nope", "aligned store not found"),
    (["merge", "nope.yml", "out"], "nope.yml", "merge config not found"),
    (["inspect", "nope.safetensors"], "nope.safetensors", "checkpoint not found"),
])
def test_a_missing_path_is_reported_as_missing_by_path(inputs, monkeypatch, capsys, args,
                                                       missing, what):
    monkeypatch.chdir(inputs)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fusechat {args[0]}: error: {missing}: {what}"]


def test_a_missing_model_named_in_a_merge_config_is_reported_by_path(inputs, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(inputs)
    (inputs / "c.yml").write_text("merge_method: linear\nmodels:\n  - model: ./model\n"
                                  "  - model: ./gone\n")
    assert cli.main(["merge", "c.yml", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fusechat merge: error: ./gone: model not found")
    assert "models[1]" in err


# --------------------------------------------------------------------------------------
# numbers people can find

def test_jsonl_errors_give_the_1_based_line_and_the_0_based_record(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "yo"}]})
    bad = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path = tmp_path / "d.jsonl"
    # line 1 good, line 2 blank, line 3 good, line 4 the bad record (the dataset's 3rd: record 2)
    path.write_text(f"{good}\n\n{good}\n{bad}\n")
    with pytest.raises(FormatError, match=r"d\.jsonl: line 4 \(record 2\): no assistant turn"):
        chat.load_conversations(path)
    path.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(FormatError, match=r"d\.jsonl: line 4 \(record 2\) is not valid JSON"):
        chat.read_records(path)
    path.write_text(f"{good}\n\n{good}\n")
    records, lines = chat.read_records(path, lines=True)
    assert len(records) == 2 and lines == [1, 3]
    # a JSON list has no lines: its records are named by index alone
    (tmp_path / "d.json").write_text(json.dumps([json.loads(good), json.loads(bad)]))
    with pytest.raises(FormatError, match=r"d\.json: record 1: no assistant turn"):
        chat.load_conversations(tmp_path / "d.json")


def test_load_into_shape_error_shows_both_shapes(tmp_path):
    path = tmp_path / "a.safetensors"
    st.save({"w": np.ones((2, 3), np.float32)}, path)
    with st.open(path) as f, pytest.raises(ValueError,
                                           match=r"'w' has shape \(3, 2\), the tensor's shape "
                                                 r"is \(2, 3\)"):
        f.load_into({"w": np.zeros((3, 2), np.float32)})


@pytest.mark.parametrize("content, rule", [
    (b"hello, this is a text file\n", "header_too_large"),
    (b"{}\n", "file_too_small"),
    (b"\x03\x00\x00\x00\x00\x00\x00\x00[1]", "header_not_object"),
    (b"\x04\x00\x00\x00\x00\x00\x00\x00{\"a\"", "header_not_json"),
])
def test_inspect_of_junk_says_not_a_safetensors_file_before_the_rule(tmp_path, capsys, content,
                                                                      rule):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    assert cli.main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fusechat inspect: error: {path}: not a safetensors file: "), err
    assert err.endswith(f"(rule {rule})"), err


# --------------------------------------------------------------------------------------
# help and docs

def test_top_level_help_is_plain_text():
    text = cli.build_parser().format_help()
    assert "``" not in text and "fusechat: knowledge fusion" in text


@pytest.mark.parametrize("command, options", [
    ("train", {"--epochs": "3", "--lr": "5e-06", "--batch-size": "4"}),
    ("eval", {"--template": "openchat_3.5", "--max-length": "2048"}),
])
def test_subcommand_help_gives_each_option_and_its_default(command, options):
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    text = " ".join(sub.choices[command].format_help().split("options:", 1)[1].split())
    for option, default in options.items():
        m = re.search(re.escape(option) + r" \S+ (.*?)\(default: ([^)]*)\)", text)
        assert m and m.group(1).strip(), (option, text)
        assert m.group(2) == default, (option, m.group(2))


def test_docs_cli_has_a_section_for_every_command():
    with open(os.path.join(DOCS, "cli.md"), encoding="utf-8") as f:
        sections = re.findall(r"^## (\S+)$", f.read(), re.M)
    assert sorted(sections) == sorted(name for name, *_ in cli.COMMANDS)
