"""Best-of-sources replies: prompts without a gold reply get the reply of the source most
sure of its own answer (sequence-level distillation data, as FuseChat-3.0 builds its
training set from several source models' replies; there a reward model picks, here the
sources' own probabilities do, so no gold answer is needed).

``best_of_replies(records, sources)`` asks every source for its greedy reply to the last user
turn of each record (with the chat template the pipeline trains with) and keeps the reply
whose probability under its own source is highest (log P of the reply's tokens and the
end-of-turn token; a reply cut off by ``max_new_tokens`` never wins). The returned records
keep every other key and say which source replied (``reply_from``) and how sure it was
(``reply_logp``). Needs torch and transformers.
"""
import logging
import math

from . import chat
from .evaluate import answer_start, greedy_answer
from ..progress import tqdm

LOG = logging.getLogger(__name__)


def best_of_replies(records, sources, *, template="openchat_3.5", max_new_tokens=16,
                    max_length=2048, quiet=False):
    """``records``: chat records (the last turn, the assistant's, is replaced); ``sources``:
    [(name, model folder)]. Returns (new records, {source name: replies won})."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not sources:
        raise ValueError("sources: at least one (name, model folder) is required")
    convs, _ = chat.load_conversations(records)
    best = [(-math.inf, None, None)] * len(convs)
    for name, path in sources:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        sep = chat.end_of_turn_token(tokenizer) if template == "openchat_3.5" else None
        for i, conv in enumerate(tqdm(convs, desc=f"replies {name}", disable=quiet)):
            if conv.turns[-1][0] != "assistant":
                raise ValueError(f"record {conv.index}: the last turn must be the assistant's "
                                 "(its text is replaced by the sources' reply)")
            tok = chat.tokenize(conv, tokenizer, template=template, max_length=max_length,
                                sep=sep)
            ids = torch.as_tensor(tok.input_ids[:answer_start(tok.loss_mask)],
                                  dtype=torch.long)[None]
            text, logp = greedy_answer(model, tokenizer, ids, sep, max_new_tokens)
            text = text.strip()
            if text and logp > best[i][0]:
                best[i] = (logp, name, text)
    out, wins = [], {name: 0 for name, _ in sources}
    for rec, conv, (logp, name, text) in zip(records, convs, best):
        if name is None:
            continue  # no source gave a complete reply: the prompt is left out
        wins[name] += 1
        messages = conv.messages()[:-1] + [{"role": "assistant", "content": text}]
        extra = {k: v for k, v in rec.items() if k not in ("messages", "conversations")}
        out.append({**extra, "messages": messages, "reply_from": name,
                    "reply_logp": round(logp, 4)})
    LOG.info("best-of replies: %d of %d prompts answered, wins %s", len(out), len(records),
             wins)
    return out, wins
