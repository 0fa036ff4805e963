"""Held-out evaluation of chat models: per-token NLL, exact-match accuracy and the
probability of the set of right answers, per skill, with bootstrap confidence intervals and
paired comparisons (fusechat.stages.stats).

For each conversation the model is scored on the supervised tokens of every assistant turn
(mean negative log-likelihood per token), and asked to answer the last user turn greedily;
the answer is exact if it equals the last assistant turn after stripping whitespace, or any
of the record's ``answers`` (a list of strings) where a question has several right answers.
``answer_p`` is the probability the model gives to that set: the sum over the right answers
of P(answer tokens and the end-of-turn token | the prompt), each answer tokenized as in
training. Exact match rewards one right reply; ``answer_p`` also rewards a model that spreads
its probability over several right answers rather than over wrong ones (what a source's
distribution can teach beyond one gold reply).
Needs torch and transformers (``pip install fusechat[torch]``).
"""
import inspect
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import chat
from ..progress import tqdm
from .stats import bootstrap_ci, seed_item_bootstrap

LOG = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Per-item scores of one model, in conversation order."""
    name: str
    index: np.ndarray   # int64 [n] row identity
    skill: np.ndarray   # object [n]
    nll: np.ndarray     # float64 [n] mean NLL per supervised token
    exact: np.ndarray   # float64 [n] 1.0 if the greedy answer matched
    answer_p: np.ndarray = None  # float64 [n] probability of the set of right answers

    def summary(self, skill=None, seed=0):
        sel = np.ones(len(self.nll), bool) if skill is None else self.skill == skill
        out = {"nll": bootstrap_ci(self.nll[sel], seed=seed),
               "exact": bootstrap_ci(self.exact[sel], seed=seed), "n": int(sel.sum())}
        if self.answer_p is not None:
            out["answer_p"] = bootstrap_ci(self.answer_p[sel], seed=seed)
        return out


def _load(model, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, str):
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        model = AutoModelForCausalLM.from_pretrained(model)
    if tokenizer is None:
        raise ValueError("tokenizer: required when model is a loaded model")
    return model, tokenizer


def evaluate(model, conversations, *, tokenizer=None, name=None, template="openchat_3.5",
             max_length=2048, max_new_tokens=16, device="cpu", quiet=False):
    """Score a model (a path or a loaded transformers causal LM) on conversations."""
    import torch

    model, tokenizer = _load(model, tokenizer)
    model = model.to(device).eval()
    sep = chat.end_of_turn_token(tokenizer) if template == "openchat_3.5" else None
    idx, skills, nlls, exact, answer_p = [], [], [], [], []
    for conv in tqdm(conversations, desc=f"eval {name or ''}".strip(), disable=quiet):
        tok = chat.tokenize(conv, tokenizer, template=template, max_length=max_length, sep=sep)
        ids = torch.as_tensor(tok.input_ids, dtype=torch.long, device=device)[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        targets = np.flatnonzero(tok.loss_mask)  # token t is predicted at position t - 1
        t = torch.as_tensor(targets, device=device)
        nll = -logp[t - 1, ids[0, t]].mean().item()
        # greedy answer to the last user turn, from exactly the tokens that precede it in
        # training
        answer, _ = greedy_answer(model, tokenizer, ids[:, :answer_start(tok.loss_mask)], sep,
                                  max_new_tokens)
        # a record may list every right answer ("answers": [...]); else the reply is the answer
        wants = conv.meta.get("answers") or [conv.turns[-1][1]]
        idx.append(conv.index)
        skills.append(conv.meta.get("skill", "all"))
        nlls.append(nll)
        exact.append(float(answer.strip() in {str(w).strip() for w in wants}))
        answer_p.append(answer_set_probability(model, tokenizer, conv, wants, template=template,
                                               max_length=max_length, sep=sep, device=device))
    return EvalResult(name or getattr(model, "name_or_path", "model"), np.asarray(idx, np.int64),
                      np.asarray(skills, dtype=object), np.asarray(nlls), np.asarray(exact),
                      np.asarray(answer_p))


def greedy_answer(model, tokenizer, prompt, sep, max_new_tokens):
    """(text, log-probability) of the greedy reply to ``prompt`` (ids [1, T]), stopping at
    the end-of-turn token ``sep`` or EOS. The log-probability is the sum over the generated
    tokens, the stop token included (-inf when the reply did not stop within
    ``max_new_tokens``: it is cut, not a reply).

    A plain loop over the model's key/value cache (argmax, first index on ties, as
    ``generate(do_sample=False)`` picks): on the demo's tiny models ``generate``'s own set-up
    per call cost more than the forwards themselves."""
    import torch

    stop_ids = {tokenizer.convert_tokens_to_ids(sep)} if sep else set()
    if tokenizer.eos_token_id is not None:
        stop_ids.add(tokenizer.eos_token_id)
    # transformers 5 renamed the cache argument and output ``past_key_values`` -> ``cache``
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"
    new, logp = [], 0.0
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        for _ in range(max_new_tokens):
            row = torch.log_softmax(out.logits[0, -1].float(), -1)
            tok = int(torch.argmax(row))
            new.append(tok)
            logp += float(row[tok])
            if tok in stop_ids:
                break
            out = model(torch.tensor([[tok]], dtype=prompt.dtype, device=prompt.device),
                        use_cache=True, **{cache: getattr(out, cache)})
    if not new or new[-1] not in stop_ids:
        logp = float("-inf")
    return tokenizer.decode(new, skip_special_tokens=True), logp


def answer_set_probability(model, tokenizer, conv, answers, *, template="openchat_3.5",
                           max_length=2048, sep=None, device="cpu"):
    """Sum over the distinct ``answers`` of the model's probability of the last assistant turn
    being that answer (its tokens up to the last supervised one, end-of-turn included,
    tokenized as in training), given the prefix all the answers' tokenizations share. One
    teacher-forced forward of all the answers as one right-padded batch.

    The shared prefix matters: a tokenizer may put the space before an answer in a piece of
    its own that is not supervised ("▁", "Bra" but "▁Tazku"); scoring each answer from its
    own first supervised token would condition them on different prefixes, and the sum could
    pass 1. From the common prefix the answers are disjoint continuations, so it cannot."""
    import torch

    toks = []
    for want in sorted({str(w).strip() for w in answers}):
        turns = list(conv.turns[:-1]) + [(conv.turns[-1][0], want)]
        alt = type(conv)(conv.index, turns, conv.meta)
        toks.append(chat.tokenize(alt, tokenizer, template=template, max_length=max_length,
                                  sep=sep))
    common = min(answer_start(t.loss_mask) for t in toks)
    for t in toks[1:]:
        same = np.asarray(t.input_ids[:common]) == np.asarray(toks[0].input_ids[:common])
        common = int(np.argmin(same)) if not same.all() else common
    # one right-padded batch: causal attention, so padding after a row's end changes nothing
    ends = [len(t.loss_mask) - int(np.argmax(np.asarray(t.loss_mask)[::-1])) for t in toks]
    ids = torch.zeros((len(toks), max(ends)), dtype=torch.long, device=device)
    attn = torch.zeros_like(ids)
    for r, (tok, end) in enumerate(zip(toks, ends)):
        ids[r, :end] = torch.as_tensor(tok.input_ids[:end], dtype=torch.long)
        attn[r, :end] = 1
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, attention_mask=attn).logits.float(), dim=-1)
    total = 0.0
    for r, end in enumerate(ends):
        t = torch.arange(max(common, 1), end, device=device)
        total += float(torch.exp(logp[r, t - 1, ids[r, t]].sum()))
    return total


def answer_start(loss_mask):
    """Position of the first supervised token of the last assistant turn (the start of the
    mask's last run of ones): the greedy answer is generated from the ids before it.

    Re-tokenizing the rendered text up to the answer instead would differ from training
    wherever the tokenizer does not fold the space before the answer into the answer's first
    piece: Qwen2's split gives "Ġ", "1", "2" for " 12" and Unigram can give "▁", "Tazku"; the
    lone space piece is never a supervised target, so a model asked to produce it first
    answers noise."""
    mask = np.asarray(loss_mask).astype(bool)
    if not mask.any():
        raise ValueError("loss_mask: no supervised token")
    end = len(mask) - int(np.argmax(mask[::-1]))  # one past the last supervised token
    unsupervised_before = np.flatnonzero(~mask[:end])
    return int(unsupervised_before[-1]) + 1 if len(unsupervised_before) else 0


SEED_MARK = "@"  # "sft@2": the SFT model of training seed 2; compare() groups by "sft"
METRICS = ("nll", "exact", "answer_p")


def model_group(name):
    """The model a result belongs to, without its training seed ("sft@2" -> "sft")."""
    return name.split(SEED_MARK, 1)[0]


def compare(results, baseline=None, seed=0):
    """Rows of a comparison table: per model and skill, the mean of each metric (NLL, exact
    match, answer-set probability) with a 95% CI, and the difference against ``baseline``
    (model minus baseline) with its 95% CI.

    Results named ``model@seed`` are the training seeds of one model: its row averages them,
    and every interval is ``fusechat.stages.stats.seed_item_bootstrap`` (items and training seeds
    resampled; the items paired with the baseline's), so it includes the training-seed
    variance. A model with a single result gets the plain item bootstrap (paired against the
    baseline). ``seeds`` in a row says how many training seeds it averages."""
    groups = {}
    for r in results:
        groups.setdefault(model_group(r.name), []).append(r)
    base = groups.get(model_group(baseline)) if baseline else None
    if baseline and base is None:
        raise ValueError(f"baseline {baseline!r}: not one of the models {sorted(groups)}")
    first = results[0]
    for r in results:
        if not np.array_equal(r.index, first.index):
            raise ValueError(f"{r.name} and {first.name} were not scored on the same items")
    skills = sorted(set(first.skill.tolist()))
    metrics = [m for m in METRICS if all(getattr(r, m) is not None for r in results)]
    rows = []
    for name, runs in groups.items():
        for skill in skills + ["all"]:
            sel = np.ones(len(first.index), bool) if skill == "all" else first.skill == skill
            row = {"model": name, "skill": skill, "n": int(sel.sum()), "seeds": len(runs)}
            for m in metrics:
                b = np.stack([getattr(r, m)[sel] for r in runs])
                own = seed_item_bootstrap(b, seed=seed)
                row[m] = (own["diff"], own["low"], own["high"])
                if base is not None and runs is not base:
                    a = np.stack([getattr(r, m)[sel] for r in base])
                    row[m + "_vs_base"] = seed_item_bootstrap(b, a, seed=seed)
            rows.append(row)
    return rows


def format_table(rows):
    """A plain-text table of compare() rows."""
    def ci(v):
        return f"{v[0]:.3f} [{v[1]:.3f},{v[2]:.3f}]" if v else ""

    def diff(d):
        return f"{d['diff']:+.3f} [{d['low']:+.3f},{d['high']:+.3f}]" if d else ""

    has_p = any("answer_p" in r for r in rows)
    head = (f"{'model':<22} {'skill':<11} {'n':>4} {'seeds':>5}  {'exact match [95% CI]':<22} "
            f"{'exact vs base':<24} ")
    head += f"{'answer-set P [95% CI]':<22} {'answer-set P vs base':<24} " if has_p else ""
    lines = [head + f"{'NLL/token [95% CI]':<22} NLL vs base"]
    for r in rows:
        line = (f"{r['model']:<22} {r['skill']:<11} {r['n']:>4} {r.get('seeds', 1):>5}  "
                f"{ci(r['exact']):<22} {diff(r.get('exact_vs_base')):<24} ")
        if has_p:
            line += f"{ci(r.get('answer_p')):<22} {diff(r.get('answer_p_vs_base')):<24} "
        line += f"{ci(r['nll']):<22} {diff(r.get('nll_vs_base'))}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def evaluate_models(models, data, out, opts, quiet=False):
    """Score [(name, model, tokenizer, _)] on data; write out/results.json (per-item scores)
    and out/table.txt (compare() against opts["baseline"])."""
    from transformers import AutoTokenizer

    names = [model_group(m[0]) for m in models]
    if opts.get("baseline") and model_group(opts["baseline"]) not in names:
        raise ConfigError(f"eval.baseline {opts['baseline']!r}: not one of the evaluated "
                          f"models {names}")
    convs, _ = chat.load_conversations(data, skip_bad_records=True)
    if opts.get("max_items"):
        convs = convs[:int(opts["max_items"])]
    results = []
    for name, model, tok, _ in models:
        results.append(evaluate(model, convs, tokenizer=AutoTokenizer.from_pretrained(tok),
                                name=name, template=opts["template"],
                                max_length=opts["max_length"],
                                max_new_tokens=opts["max_new_tokens"], quiet=quiet))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump([{"name": e.name, "index": e.index.tolist(), "skill": e.skill.tolist(),
                    "nll": e.nll.tolist(), "exact": e.exact.tolist(),
                    "answer_p": None if e.answer_p is None else e.answer_p.tolist()}
                   for e in results], f)
    rows = compare(results, baseline=opts.get("baseline"))
    with open(os.path.join(out, "table.txt"), "w", encoding="utf-8") as f:
        f.write(format_table(rows) + "\n")


def load_results(folder):
    """The EvalResults an eval step wrote (``folder``/results.json)."""
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        rows = json.load(f)
    return [EvalResult(r["name"], np.asarray(r["index"], np.int64),
                       np.asarray(r["skill"], dtype=object), np.asarray(r["nll"]),
                       np.asarray(r["exact"]),
                       None if r.get("answer_p") is None else np.asarray(r["answer_p"]))
            for r in rows]
