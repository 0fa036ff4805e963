"""Chat dataset loading, validation, templates and supervision masks (fusechat.stages.chat)."""
import json

import numpy as np
import pytest

from fusechat.demo import data as demo_data, models as demo_models
from fusechat.stages import chat
from fusechat.errors import FormatError

SHAREGPT = {"conversations": [{"from": "human", "value": "What is 2 + 3?"},
                              {"from": "gpt", "value": "5"},
                              {"from": "human", "value": "Reverse the word: lamp"},
                              {"from": "gpt", "value": "pmal"}]}
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Uppercase the word: tiger"},
                         {"role": "assistant", "content": "TIGER"}], "skill": "strings"}


@pytest.fixture(scope="module", params=["byte_level", "metaspace"])
def tokenizer(request):
    return demo_models.train_tokenizer(request.param)


def test_load_json_and_jsonl(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([SHAREGPT, MESSAGES]))
    q = tmp_path / "d.jsonl"
    q.write_text(json.dumps(SHAREGPT) + "\n\n" + json.dumps(MESSAGES) + "\n")
    for path in (p, q):
        convs, skipped = chat.load_conversations(path)
        assert skipped == 0 and [c.index for c in convs] == [0, 1]
        assert convs[0].turns[1] == ("assistant", "5")
        assert convs[1].turns[0] == ("system", "Be brief.") and convs[1].meta == {"skill": "strings"}


BAD = [
    ({"conversations": [{"value": "hi"}, {"from": "gpt", "value": "x"}]}, "missing role"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
     "do not alternate"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
     "empty assistant turn"),
    ({"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
    ({"messages": [{"role": "wizard", "content": "a"}]}, "unknown role"),
    ({"text": "no turns"}, "no 'conversations'"),
]


@pytest.mark.parametrize("record,rule", BAD, ids=[r for _, r in BAD])
def test_bad_records_name_index_and_rule(record, rule):
    with pytest.raises(FormatError, match=rf"record 2: .*{rule}"):
        chat.load_conversations([SHAREGPT, MESSAGES, record])
    convs, skipped = chat.load_conversations([SHAREGPT, record, MESSAGES], skip_bad_records=True)
    assert skipped == 1 and [c.index for c in convs] == [0, 2]


def test_leading_assistant_turn_is_dropped():
    rec = {"conversations": [{"from": "gpt", "value": "Hello!"}] + SHAREGPT["conversations"]}
    (conv,), _ = chat.load_conversations([rec])
    assert conv.turns[0] == ("user", "What is 2 + 3?") and len(conv.turns) == 4


def test_openchat_template_string(tokenizer):
    (conv,), _ = chat.load_conversations([SHAREGPT])
    text, spans = chat.render(conv, tokenizer, "openchat_3.5")
    sep = "</s>"
    assert text == ("GPT4 Correct User: What is 2 + 3?" + sep + "GPT4 Correct Assistant: 5" + sep +
                    "GPT4 Correct User: Reverse the word: lamp" + sep +
                    "GPT4 Correct Assistant: pmal" + sep)
    assert [text[a:b] for a, b in spans] == ["5" + sep, "pmal" + sep]


def _squash(s):
    return "".join(s.split())


@pytest.mark.parametrize("template", ["openchat_3.5", "model"])
def test_supervised_tokens_are_exactly_the_assistant_turns(tokenizer, template):
    tokenizer.chat_template = ("{% for m in messages %}<|end_of_turn|>{{ m['role'] }}\n"
                               "{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<|end_of_turn|>assistant\n{% endif %}")
    records = [SHAREGPT, MESSAGES] + demo_data.make_dataset(20, seed=3)
    convs, _ = chat.load_conversations(records)
    for conv in convs:
        tok = chat.tokenize(conv, tokenizer, template=template)
        assert tok.input_ids.dtype == np.int32 and tok.loss_mask.dtype == np.uint8
        assert len(tok.input_ids) == len(tok.loss_mask)
        # decoding only the supervised tokens gives the answers and their end-of-turn tokens
        sup = tokenizer.decode(tok.input_ids[tok.loss_mask.astype(bool)])
        want = "".join(t + "</s>" for r, t in conv.turns if r == "assistant")
        assert _squash(sup) == _squash(want), (template, conv.index, sup)


def test_truncation_that_removes_every_target_is_an_error(tokenizer):
    (conv,), _ = chat.load_conversations([SHAREGPT])
    with pytest.raises(FormatError, match="record 0: no supervised token"):
        chat.tokenize(conv, tokenizer, max_length=4)


def test_end_of_turn_rules():
    tok = demo_models.train_tokenizer("byte_level")
    assert chat.end_of_turn_token(tok) == "</s>"
    with pytest.raises(ValueError, match="template"):
        chat.render(chat.Conversation(0, [("user", "a"), ("assistant", "b")]), tok, "alpaca")


def test_demo_dataset_is_deterministic_and_correct():
    a = demo_data.make_dataset(200, seed=5)
    assert a == demo_data.make_dataset(200, seed=5) and a != demo_data.make_dataset(200, seed=6)
    facts = demo_data.fact_table()
    for rec in a:
        q, ans = rec["messages"][0]["content"], rec["answer"]
        assert rec["messages"][1]["content"] == ans
        assert ans in rec["answers"]
        if rec["skill"] == "arithmetic" and q.startswith("Name two digits"):
            total = int(q[len("Name two digits that add up to "):-1])
            pairs = [tuple(map(int, a.split(" and "))) for a in rec["answers"]]
            assert sorted(pairs) == [(x, total - x) for x in range(10) if 0 <= total - x <= 9]
        elif rec["skill"] == "arithmetic":
            x, op, y = q[len("What is "):-1].split()
            assert rec["answers"] == [ans]
            assert int(ans) == (int(x) + int(y) if op == "+" else int(x) - int(y))
        elif rec["skill"] == "strings":
            w = q.split(": ")[1]
            assert ans in (w[::-1], w.upper())
        elif q.startswith("Name a city in "):
            country = q[len("Name a city in "):-1]
            assert len(set(rec["answers"])) == 3 and rec["answers"][0] == facts[country]
            others = set(facts) | set(facts.values())
            assert not others & set(rec["answers"][1:])  # the extra cities are new names
        else:
            assert rec["answers"] == [ans] == [facts[q[len("What is the capital of "):-1]]]
    only = demo_data.make_dataset(50, seed=1, mix={"facts": 1.0})
    assert {r["skill"] for r in only} == {"facts"}
    with pytest.raises(ValueError, match="unknown skill"):
        demo_data.make_dataset(5, mix={"poetry": 1.0})
