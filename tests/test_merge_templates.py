"""chat_template of a merge config (fusechat/merge/templates.py): each named template
renders its family's published format (written out below), ``auto`` picks the template most
models carry, bad values are refused; and, when mergekit 0.1.5 is installed, the rendered
strings agree with mergekit's templates of the same name through transformers, and ``auto``
picks what mergekit picks."""
import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from fusechat.errors import ConfigError
from fusechat.merge import run
from fusechat.merge.templates import AUTO, TEMPLATES, chat_template, resolve
from tests.merge_models import hand_adapter, make_family, run_mergekit

S, U, A = ({"role": r, "content": c} for r, c in (("system", "Be brief."), ("user", "Q1"),
                                                    ("assistant", "A1")))
U2 = {"role": "user", "content": "Q2"}

# system, user, assistant, user, then the generation prompt; bos_token <s>, eos_token </s>
PUBLISHED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
              "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
              "<|im_start|>assistant\n",
    # Meta's Llama 3 headers; mergekit puts a newline after each <|eot_id|>
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\n"
              "<|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|>\n"
              "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>\n"
              "<|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|>\n"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    # Mistral Instruct: the system text opens the first [INST]; no generation prompt
    "mistral": "<s> [INST] Be brief.\n\nQ1 [/INST] A1</s> [INST] Q2 [/INST]",
    # Alpaca with the system text as its preamble; mergekit puts no blank line before the
    # generation prompt
    "alpaca": "Be brief.\n\n### Instruction:\nQ1\n\n### Response:\nA1\n\n### Instruction:\nQ2"
              "### Response:\n",
    # EXAONE 3 turns, with the indentation mergekit's rendering carries
    "exaone": "    [|system|]Be brief.\n        [|endofturn|]\n\n    [|user|]Q1\n        \n\n"
              "    [|assistant|]A1\n        [|endofturn|]\n\n    [|user|]Q2\n        \n\n"
              "    [|assistant|]\n",
}


def _render(template, messages, add_generation_prompt=True):
    """transformers' rendering environment (sandboxed, trim_blocks, lstrip_blocks,
    raise_exception), with bos_token <s> and eos_token </s>."""
    sandbox = pytest.importorskip("jinja2.sandbox")

    def raise_exception(message):
        raise ValueError(message)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token="<s>",
                                            eos_token="</s>",
                                            add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_template_renders_published_format(name):
    assert sorted(PUBLISHED) == sorted(TEMPLATES)
    assert chat_template(name, "chat_template") == TEMPLATES[name]
    assert _render(TEMPLATES[name], [S, U, A, U2]) == PUBLISHED[name]


def test_template_details():
    """Without a generation prompt; trimming (llama3, alpaca) or not (chatml, mistral);
    alpaca prompts only when the assistant has not answered; exaone's empty system turn;
    mistral refuses broken alternation and other roles."""
    pad = {"role": "user", "content": "  Q \n"}
    assert _render(TEMPLATES["llama3"], [pad], False) == \
        "<s><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>\n"
    assert _render(TEMPLATES["chatml"], [pad], False) == "<|im_start|>user\n  Q \n<|im_end|>\n"
    assert _render(TEMPLATES["mistral"], [pad, A]) == "<s> [INST]   Q \n [/INST] A1</s>"
    assert _render(TEMPLATES["alpaca"], [U, A]) == "\n\n### Instruction:\nQ1\n\n### Response:\nA1"
    assert _render(TEMPLATES["exaone"], [U], False) == \
        "        [|system|][|endofturn|]\n\n    [|user|]Q1\n        \n\n"
    with pytest.raises(ValueError, match="roles must alternate user/assistant"):
        _render(TEMPLATES["mistral"], [U, U2])
    with pytest.raises(ValueError, match="Only user and assistant roles are supported"):
        _render(TEMPLATES["mistral"], [U, A, U2, S])


def test_bad_values_refused():
    for value in ("llama-3", "vicuna", "LLAMA3"):
        with pytest.raises(ConfigError, match=rf"^x\.yml: chat_template: '{value}' is neither "
                                              r"a template name \(alpaca, auto, chatml, exaone,"
                                              r" llama3, mistral\) nor a Jinja template"):
            chat_template(value, "x.yml: chat_template")
    with pytest.raises(ConfigError, match=r"\(did you mean llama3\?\)"):
        chat_template("llama-3", "chat_template")
    for value in (3, "", None):
        with pytest.raises(ConfigError, match="chat_template: expected a template name "
                                              r"\(alpaca, auto, chatml"):
            chat_template(value, "chat_template")
    with pytest.raises(ConfigError, match="chat_template: not a valid Jinja template"):
        chat_template("{% for m in messages %}", "chat_template")
    assert chat_template("auto", "chat_template") == AUTO


def _model(root, name, template=None, where="tokenizer_config"):
    """A folder with a tokenizer_config.json and, optionally, a chat template in it (or in
    chat_template.jinja, or as a list of named templates)."""
    folder = os.path.join(root, name)
    os.makedirs(folder)
    tc = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if where == "jinja":
        with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
            f.write(template)
        tc["chat_template"] = "ignored: chat_template.jinja is read first"
    elif where == "list":
        tc["chat_template"] = [{"name": "tool_use", "template": "TOOL"},
                               {"name": "default", "template": template}]
    elif template is not None:
        tc["chat_template"] = template
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f)
    return folder


def test_auto_rule(tmp_path):
    """The template most models carry, each model once; ties to the base's, else to the
    first in config order; models without one do not count; none: None."""
    m = {n: _model(tmp_path, n, t) for n, t in (("x1", "X"), ("x2", "X"), ("y1", "Y"),
                                                ("y2", "Y"), ("none", None))}
    assert resolve(AUTO, [m["y1"], m["x1"], m["x2"]]) == "X"
    assert resolve(AUTO, [m["y1"], m["x1"], m["none"]]) == "Y"
    assert resolve(AUTO, [m["x1"], m["y1"], m["none"]]) == "X"
    assert resolve(AUTO, [m["x1"], m["y1"], m["none"]], base=m["y1"]) == "Y"
    # the base counts once, also when listed under models
    assert resolve(AUTO, [m["x1"], m["y1"], m["y2"]], base=m["x1"]) == "Y"
    assert resolve(AUTO, [m["none"], m["x1"]], base=m["none"]) == "X"
    assert resolve(AUTO, [m["none"]]) is None
    assert resolve("T", [m["x1"]]) == "T"
    j = _model(tmp_path, "j", "J", where="jinja")
    d = _model(tmp_path, "d", "D", where="list")
    assert resolve(AUTO, [j]) == "J" and resolve(AUTO, [d]) == "D"


def test_auto_lora_reads_the_base_folder(tmp_path):
    from fusechat.merge.lora import LoraRef

    base = _model(tmp_path, "base", "BASE")
    adapter = _model(tmp_path, "adapter", "ADAPTER")
    assert resolve(AUTO, [LoraRef(base, adapter)]) == "BASE"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(str(tmp_path_factory.mktemp("tpl_models")), 2, "float32", seed=13)


def _with_template(src, folder, template):
    shutil.copytree(src, folder)
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path) as f:
        tc = json.load(f)
    with open(path, "w") as f:
        json.dump(dict(tc, chat_template=template) if template else tc, f)
    return str(folder)


def test_written_and_rendered(family, tmp_path):
    """Each name, auto and a Jinja string land in chat_template.jinja, the only template
    the output carries (the donor's tokenizer_config.json template removed); transformers
    renders the published format. auto with no template anywhere writes none."""
    transformers = pytest.importorskip("transformers")
    base, (t0, t1) = family
    donor = _with_template(base, tmp_path / "donor", "OLD {{ messages }}")
    jinja = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    other = _with_template(t0, tmp_path / "t0", jinja)
    other2 = _with_template(t1, tmp_path / "t1", jinja)
    cases = [(n, TEMPLATES[n], PUBLISHED[n]) for n in sorted(TEMPLATES)]
    cases += [(jinja, jinja, "[system]Be brief.[user]Q1[assistant]A1[user]Q2"),
              ("auto", jinja, "[system]Be brief.[user]Q1[assistant]A1[user]Q2")]
    for value, text, want in cases:
        out = tmp_path / "o"
        run({"merge_method": "linear", "dtype": "float32", "chat_template": value,
             "models": [{"model": p, "parameters": {"weight": 1.0}}
                        for p in (donor, other, other2)]}, out, overwrite=True, quiet=True)
        with open(out / "chat_template.jinja") as f:
            assert f.read() == text, value
        with open(out / "tokenizer_config.json") as f:
            assert "chat_template" not in json.load(f)
        tok = transformers.AutoTokenizer.from_pretrained(str(out))
        assert tok.apply_chat_template([S, U, A, U2], tokenize=False,
                                       add_generation_prompt=True) == want, value
    run({"merge_method": "linear", "dtype": "float32", "chat_template": "auto",
         "models": [{"model": p, "parameters": {"weight": 1.0}} for p in (base, t0)]},
        tmp_path / "none", quiet=True)
    assert not os.path.exists(tmp_path / "none" / "chat_template.jinja")


def test_config_errors_name_the_key(family, tmp_path):
    base, (t0, _) = family
    with pytest.raises(ConfigError, match=r"chat_template: 'llama2' is neither a template "
                                          r"name \(alpaca, auto, chatml, exaone, llama3, "
                                          r"mistral\) nor a Jinja template"):
        run({"merge_method": "linear", "chat_template": "llama2",
             "models": [{"model": base, "parameters": {"weight": 1.0}}]}, tmp_path / "o",
            quiet=True)
    assert not (tmp_path / "o").exists()


# against mergekit 0.1.5 (the oracle), through transformers' apply_chat_template

def _c(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant", "t": "tool"}
    return [{"role": roles[t[0]], "content": t[1:]} for t in turns]


CONVERSATIONS = [
    _c("uHi"), _c("sBe brief.", "uHi"), _c("ssys", "uHi", "aHello!"),
    _c("ss", "uQ1", "aA1", "uQ2"), _c("uQ1", "aA1", "uQ2", "aA2"), _c("u  padded \n"),
    _c("ssys"), _c("aans"), _c("uq1", "uq2"), _c("ss1", "ss2", "uq"), _c("uq1", "smid", "uq2"),
    _c("uq", "tT"), _c("u"), _c("s s \n", "u\n u ", "a  a\n"), _c("ss", "aa"),
    _c("uq", "aa1", "aa2"), _c("uq", "ss"), _c("ss1", "uq", "ss2"), _c("uq", "aa", "ss"),
    _c("ss1", "ss2"), _c("tt", "aa"), _c("tt", "uq"), _c("uq", "aa", "tt"), _c("s  ", "uq"),
]


def _renderings(folder, **special):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), **special)
    out = []
    for conv in CONVERSATIONS:
        for gen in (False, True):
            try:
                out.append(tok.apply_chat_template(conv, tokenize=False,
                                                   add_generation_prompt=gen))
            except Exception as exc:  # both must refuse the same conversations
                out.append(f"refused: {type(exc).__name__}")
    return out


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_named_templates_match_mergekit(family, tmp_path, name):
    """mergekit's template of each name and fusechat's render the same strings for 24
    conversations (system, multi-turn, roles out of order, tool turns, whitespace), with and
    without the generation prompt, with the tokenizer's own and with other BOS/EOS tokens."""
    pytest.importorskip("mergekit")
    cfg = {"merge_method": "linear", "dtype": "float32", "chat_template": name,
           "models": [{"model": family[0], "parameters": {"weight": 1.0}}]}
    run_mergekit(cfg, tmp_path / "mk", copy_tokenizer=True)
    run(cfg, tmp_path / "fc", quiet=True)
    for special in ({}, {"bos_token": "[B]", "eos_token": "[E]"}):
        want = _renderings(tmp_path / "mk", **special)
        got = _renderings(tmp_path / "fc", **special)
        for conv, w, g in zip([c for c in CONVERSATIONS for _ in (0, 1)], want, got):
            assert g == w, (name, special, conv)
    assert any(r.startswith("refused") for r in want) == (name == "mistral")


def test_auto_matches_mergekit(family, tmp_path):
    """auto picks the template mergekit picks: the majority, the base counted once, a
    base+adapter by its base folder, chat_template.jinja before tokenizer_config.json, and
    none when no model has one (mergekit breaks ties arbitrarily: not compared)."""
    pytest.importorskip("mergekit")
    pytest.importorskip("peft")
    base, (t0, t1) = family
    x = "X{% for m in messages %}{{ m['content'] }}{% endfor %}"
    y = "Y{% for m in messages %}{{ m['content'] }}{% endfor %}"
    bx = _with_template(base, tmp_path / "bx", x)
    t0y, t1y = (_with_template(t, tmp_path / n, y) for t, n in ((t0, "t0y"), (t1, "t1y")))
    plain = _with_template(t1, tmp_path / "plain", None)
    jinja = _with_template(t0, tmp_path / "jinja", x)
    with open(os.path.join(jinja, "chat_template.jinja"), "w") as f:
        f.write(y)
    adapter = hand_adapter(str(tmp_path / "ad"), safetensors.numpy.load_file(
        os.path.join(base, "model.safetensors")), np.random.default_rng(3))
    shutil.copy(os.path.join(t0y, "tokenizer_config.json"), adapter)
    shutil.copy(os.path.join(t0y, "tokenizer.json"), adapter)
    cases = {"majority": ("task_arithmetic", bx, [bx, t0y, t1y]),
             "base_only": ("task_arithmetic", bx, [plain]),
             "jinja_first": ("linear", None, [jinja]),
             "lora_base_folder": ("linear", None, [f"{bx}+{adapter}", plain]),
             "none": ("linear", None, [plain])}
    for case, (method, b, models) in cases.items():
        cfg = {"merge_method": method, "dtype": "float32", "chat_template": "auto",
               "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models]}
        if b:
            cfg["base_model"] = b
        run_mergekit(cfg, tmp_path / case / "mk", copy_tokenizer=True,
                     lora_merge_cache=str(tmp_path / "cache"))
        run(cfg, tmp_path / case / "fc", quiet=True)
        got = []
        for o in ("mk", "fc"):
            path = tmp_path / case / o / "chat_template.jinja"
            got.append(path.read_text() if path.exists() else None)
        assert got[1] == got[0], case
        assert got[0] == {"majority": y, "base_only": x, "jinja_first": y,
                          "lora_base_folder": x, "none": None}[case]
