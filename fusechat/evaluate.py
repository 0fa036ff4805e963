"""Held-out evaluation of chat models: per-token NLL and exact-match accuracy, per skill,
with bootstrap confidence intervals and paired comparisons (fusechat.stats).

For each conversation the model is scored on the supervised tokens of every assistant turn
(mean negative log-likelihood per token), and asked to answer the last user turn greedily;
the answer is exact if it equals the last assistant turn after stripping whitespace, or any
of the record's ``answers`` (a list of strings) where a question has several right answers.
Needs torch and transformers (``pip install fusechat[torch]``).
"""
import logging
from dataclasses import dataclass

import numpy as np

from . import chat
from .progress import tqdm
from .stats import bootstrap_ci, paired_bootstrap

LOG = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Per-item scores of one model, in conversation order."""
    name: str
    index: np.ndarray   # int64 [n] row identity
    skill: np.ndarray   # object [n]
    nll: np.ndarray     # float64 [n] mean NLL per supervised token
    exact: np.ndarray   # float64 [n] 1.0 if the greedy answer matched

    def summary(self, skill=None, seed=0):
        sel = np.ones(len(self.nll), bool) if skill is None else self.skill == skill
        return {"nll": bootstrap_ci(self.nll[sel], seed=seed),
                "exact": bootstrap_ci(self.exact[sel], seed=seed), "n": int(sel.sum())}


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
    stop_ids = {tokenizer.convert_tokens_to_ids(sep)} if sep else set()
    if tokenizer.eos_token_id is not None:
        stop_ids.add(tokenizer.eos_token_id)
    idx, skills, nlls, exact = [], [], [], []
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
        prompt = ids[:, :answer_start(tok.loss_mask)]
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=sorted(stop_ids) or None,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
        # a record may list every right answer ("answers": [...]); else the reply is the answer
        wants = conv.meta.get("answers") or [conv.turns[-1][1]]
        idx.append(conv.index)
        skills.append(conv.meta.get("skill", "all"))
        nlls.append(nll)
        exact.append(float(answer.strip() in {str(w).strip() for w in wants}))
    return EvalResult(name or getattr(model, "name_or_path", "model"), np.asarray(idx, np.int64),
                      np.asarray(skills, dtype=object), np.asarray(nlls), np.asarray(exact))


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


def compare(results, baseline=None, seed=0):
    """Rows of a comparison table: per model and skill, NLL and exact match with 95% CIs, and
    the paired difference of exact match against ``baseline`` (a name in results)."""
    by_name = {r.name: r for r in results}
    base = by_name.get(baseline) if baseline else None
    skills = sorted(set(np.concatenate([r.skill for r in results]).tolist()))
    rows = []
    for r in results:
        if base is not None and not np.array_equal(r.index, base.index):
            raise ValueError(f"{r.name} and {base.name} were not scored on the same items")
        for skill in skills + ["all"]:
            s = r.summary(None if skill == "all" else skill, seed)
            row = {"model": r.name, "skill": skill, "n": s["n"], "nll": s["nll"],
                   "exact": s["exact"]}
            if base is not None and r is not base:
                sel = np.ones(len(r.exact), bool) if skill == "all" else r.skill == skill
                row["exact_vs_base"] = paired_bootstrap(base.exact[sel], r.exact[sel], seed=seed)
                row["nll_vs_base"] = paired_bootstrap(base.nll[sel], r.nll[sel], seed=seed)
            rows.append(row)
    return rows


def format_table(rows):
    """A plain-text table of compare() rows."""
    def diff(d):
        return f"{d['diff']:+.3f} [{d['low']:+.3f},{d['high']:+.3f}]" if d else ""

    lines = [f"{'model':<22} {'skill':<11} {'n':>4}  {'NLL/token [95% CI]':<24} "
             f"{'exact match [95% CI]':<24} {'exact vs base':<24} {'NLL vs base'}"]
    for r in rows:
        nll, ex = r["nll"], r["exact"]
        lines.append(f"{r['model']:<22} {r['skill']:<11} {r['n']:>4}  "
                     f"{nll[0]:.3f} [{nll[1]:.3f},{nll[2]:.3f}]    "
                     f"{ex[0]:.3f} [{ex[1]:.3f},{ex[2]:.3f}]    "
                     f"{diff(r.get('exact_vs_base')):<24} {diff(r.get('nll_vs_base'))}".rstrip())
    return "\n".join(lines)
