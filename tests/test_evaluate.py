"""fusechat.stages.evaluate: the greedy answer is asked from the training tokenization's own prefix,
and the demo's model folders load back with the tokenizer they were trained with."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from fusechat.demo import data as demo_data, models as demo_models, run as demo  # noqa: E402
from fusechat.stages import chat  # noqa: E402
from fusechat.stages.evaluate import answer_start, evaluate  # noqa: E402

ARITH = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                       {"role": "assistant", "content": str(a + b)}]}
         for a, b in [(7, 5), (3, 9), (8, 8), (1, 2), (6, 0), (4, 7)]]


def test_answer_start_is_the_start_of_the_last_supervised_run():
    assert answer_start([0, 0, 1, 1, 0, 0, 1, 1, 1]) == 6
    assert answer_start([0, 1, 1, 0, 1, 0, 0]) == 4
    assert answer_start([0, 0, 0, 1]) == 3
    with pytest.raises(ValueError, match="no supervised token"):
        answer_start([0, 0])


@pytest.mark.parametrize("kind", demo_models.TOKENIZER_KINDS)
def test_prompt_plus_answer_is_the_training_tokenization(kind):
    tok = demo_models.train_tokenizer(kind)
    sep = chat.end_of_turn_token(tok)
    for conv in chat.load_conversations(demo_data.make_dataset(20, seed=4))[0]:
        t = chat.tokenize(conv, tok, sep=sep)
        s = answer_start(t.loss_mask)
        assert t.loss_mask[s] == 1 and t.loss_mask[s - 1] == 0 and t.loss_mask[s:].all()
        answer = tok.decode(t.input_ids[s:].tolist(), skip_special_tokens=True)
        assert answer.strip() == conv.turns[-1][1]


def test_byte_level_answer_prompt_keeps_the_lone_space_piece():
    """The regression: Qwen2's split makes " 12" -> "Ġ", "1", "2"; re-tokenizing the text up
    to the answer (stripped of its space) drops the "Ġ" the model was trained to follow."""
    tok = demo_models.train_tokenizer("byte_level")
    conv = chat.load_conversations([{"messages": [
        {"role": "user", "content": "What is 7 + 5?"},
        {"role": "assistant", "content": "12"}]}])[0][0]
    t = chat.tokenize(conv, tok, sep="</s>")
    s = answer_start(t.loss_mask)
    assert tok.convert_ids_to_tokens(t.input_ids[s - 1:].tolist()) == ["Ġ", "1", "2", "</s>"]
    text, spans = chat.render(conv, tok, sep="</s>")
    retokenized = tok(text[:spans[-1][0]].rstrip(" "))["input_ids"]
    assert retokenized != t.input_ids[:s].tolist()


def test_a_model_that_learned_its_answers_scores_exact():
    """A tiny Qwen2 with the byte-level tokenizer memorises six sums; evaluate must find all six
    (with the old re-tokenized prompt it had to emit an untrained "Ġ" first and scored 0)."""
    import torch

    tok = demo_models.train_tokenizer("byte_level")
    model = demo_models.build_model("qwen2", tok, hidden=32, layers=1, seed=0)
    demo_models.train_chat_model(model, tok, ARITH * 8, epochs=25, batch_size=16, lr=1e-2,
                                 quiet=True)
    convs, _ = chat.load_conversations(ARITH)
    with torch.no_grad():
        res = evaluate(model, convs, tokenizer=tok, name="memoriser", max_new_tokens=4,
                       quiet=True)
    assert res.exact.tolist() == [1.0] * len(convs)
    assert np.all(res.nll < 0.5)
    # answer-set probability of the one gold reply: the product of its supervised tokens'
    # probabilities, i.e. exp(-mean NLL x their count) (one assistant turn per chat)
    n_sup = [int(chat.tokenize(c, tok, sep="</s>").loss_mask.sum()) for c in convs]
    np.testing.assert_allclose(res.answer_p, np.exp(-res.nll * np.array(n_sup)), rtol=1e-4)
    assert np.all(res.answer_p > 0.5)
    # with two right answers it is the sum of both answers' probabilities
    from fusechat.stages.evaluate import answer_set_probability
    other = str(int(convs[0].turns[-1][1]) + 1)
    both = answer_set_probability(model, tok, convs[0], [convs[0].turns[-1][1], other],
                                  sep="</s>")
    alone = answer_set_probability(model, tok, convs[0], [other], sep="</s>")
    assert both == pytest.approx(res.answer_p[0] + alone, rel=1e-5)
    # with an "answers" list, a reply is exact when it is any of them
    convs[0].meta["answers"] = ["nope", "never"]
    convs[1].meta["answers"] = ["nope", convs[1].turns[-1][1]]
    with torch.no_grad():
        res = evaluate(model, convs[:2], tokenizer=tok, max_new_tokens=4, quiet=True)
    assert res.exact.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("arch,kind", [(arch, kind) for _, arch, kind, *_ in demo.MODELS])
def test_demo_model_folders_reload_with_their_own_tokenizer(tmp_path, arch, kind):
    tok = demo_models.train_tokenizer(kind)
    demo_models.save(demo_models.build_model(arch, tok, hidden=16, layers=1), tok, tmp_path)


def test_save_rejects_a_tokenizer_that_reloads_differently(tmp_path):
    """transformers loads a qwen2 folder as Qwen2Tokenizer (its own split over the saved
    merges); a byte-level BPE with GPT-2's split would silently tokenize digits otherwise."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split
    bpe.decoder = decoders.ByteLevel()
    texts = [m["content"] for r in demo_data.make_dataset(500, seed=0) for m in r["messages"]]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=demo_models.SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", unk_token="<unk>",
                                  pad_token="<unk>")
    model = demo_models.build_model("qwen2", tok, hidden=16, layers=1)
    with pytest.raises(RuntimeError, match="Qwen2Tokenizer"):
        demo_models.save(model, tok, tmp_path)


@pytest.mark.parametrize("kind", demo_models.TOKENIZER_KINDS)
def test_answer_set_probability_is_a_probability(kind):
    """The answers are disjoint continuations of one shared prefix, so their probabilities
    sum to at most 1, also where the tokenizer puts the space before some answers in an
    unsupervised piece of its own (Unigram: "▁", "Bra"); and the sum over one answer is
    that answer's probability."""
    from fusechat.stages.evaluate import answer_set_probability

    tok = demo_models.train_tokenizer(kind)
    arch = {"byte_level": "qwen2", "metaspace": "llama", "unigram": "gpt2"}[kind]
    model = demo_models.build_model(arch, tok, hidden=16, layers=1, seed=3).eval()
    recs = [r for r in demo_data.make_dataset(200, seed=8) if len(r["answers"]) > 1][:6]
    for conv in chat.load_conversations(recs)[0]:
        answers = conv.meta["answers"]
        total = answer_set_probability(model, tok, conv, answers, sep="</s>")
        parts = [answer_set_probability(model, tok, conv, [a], sep="</s>") for a in answers]
        assert 0.0 < total <= 1.0 + 1e-6
        # each part alone is scored from its own first supervised token, a later point
        # than (or the same as) the shared prefix: the set's sum is never above theirs
        assert total <= sum(parts) + 1e-9


@pytest.mark.parametrize("arch,kind", [("llama", "metaspace"), ("qwen2", "byte_level"),
                                       ("gpt2", "unigram")])
def test_greedy_answer_and_answer_set_match_their_slow_twins(arch, kind):
    """greedy_answer's key/value-cache loop gives generate(do_sample=False)'s reply and the
    same log-probability; answer_set_probability's one padded batch gives the sum of one
    unpadded forward per answer (both twins written here from transformers' own calls)."""
    import math

    import torch

    from fusechat.stages.evaluate import answer_set_probability, greedy_answer

    tok = demo_models.train_tokenizer(kind)
    model = demo_models.build_model(arch, tok, hidden=32, layers=1, seed=5).eval()
    demo_models.train_chat_model(model, tok, demo_data.make_dataset(64, seed=2), epochs=2,
                                 quiet=True)
    sep = chat.end_of_turn_token(tok)
    stop = sorted({tok.convert_tokens_to_ids(sep), tok.eos_token_id})
    recs = demo_data.make_dataset(40, seed=9)
    stopped = 0
    for conv in chat.load_conversations(recs)[0]:
        t = chat.tokenize(conv, tok, sep=sep)
        prompt = torch.as_tensor(t.input_ids[:answer_start(t.loss_mask)])[None]
        text, logp = greedy_answer(model, tok, prompt, sep, 6)
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=stop,
                                 output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id)
        new = out.sequences[0, prompt.shape[1]:].tolist()
        assert text == tok.decode(new, skip_special_tokens=True)
        if new[-1] in stop:
            stopped += 1
            want = sum(float(torch.log_softmax(s[0].float(), -1)[i])
                       for s, i in zip(out.scores, new))
            assert logp == pytest.approx(want, abs=1e-4)
        else:
            assert logp == -math.inf
        # the slow twin: the shared prefix, then one forward per answer
        answers = sorted(set(conv.meta["answers"]))
        toks = [chat.tokenize(type(conv)(conv.index, conv.turns[:-1] + [("assistant", a)],
                                         conv.meta), tok, sep=sep) for a in answers]
        common = min(answer_start(x.loss_mask) for x in toks)
        for x in toks[1:]:
            same = np.asarray(x.input_ids[:common]) == np.asarray(toks[0].input_ids[:common])
            common = common if same.all() else int(np.argmin(same))
        slow = 0.0
        for x in toks:
            end = int(np.flatnonzero(x.loss_mask)[-1]) + 1
            ids = torch.as_tensor(x.input_ids[:end])[None]
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0].float(), -1)
            pos = torch.arange(max(common, 1), end)
            slow += float(torch.exp(lp[pos - 1, ids[0, pos]].sum()))
        got = answer_set_probability(model, tok, conv, conv.meta["answers"], sep=sep)
        assert got == pytest.approx(slow, rel=1e-4, abs=1e-9)
    assert stopped > 0  # the log-probability comparison ran
