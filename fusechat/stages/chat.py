"""Chat datasets: loading, validation, chat templates and supervision masks.

Records come as a JSON list or JSON Lines, in either common shape:

- ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}]}``
- messages: ``{"messages": [{"role": "user"|"assistant"|"system", "content": "..."}]}``

Every record must have an optional leading system turn, then strictly alternating user and
assistant turns starting with the user (a leading assistant turn is dropped, as the
reference does), and no empty assistant turn. A bad record raises FormatError naming it and
the rule; with ``skip_bad_records=True`` it is skipped and counted instead. Errors name a
record as ``record N``, its 0-based row in the dataset (the ``index`` that TopK stores and
evaluation results keep), and in a .jsonl file also as ``line L``, its 1-based line.

Two ways to render a conversation into token ids (``template=``):

- ``"openchat_3.5"``: the reference's fixed template for every model
  (``"GPT4 Correct User: " + u + SEP + "GPT4 Correct Assistant: " + a + SEP ...``) with SEP
  the model's own end-of-turn token, so every model sees the same words.
- ``"model"``: the tokenizer's own chat template (``apply_chat_template``).

Supervised tokens are the assistant text plus the end-of-turn that closes it. The mask is
derived from character spans and the tokenizer's offset mapping, so it does not depend on
the tokenizer's quirks (BOS, merges across the boundary) the way the reference's per-piece
token counting does.
"""
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError

LOG = logging.getLogger(__name__)

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system", "bot": "assistant", "model": "assistant"}
OPENCHAT_ROLES = {"user": "GPT4 Correct User", "assistant": "GPT4 Correct Assistant"}
TEMPLATES = ("openchat_3.5", "model")


@dataclass
class Conversation:
    """One validated dialogue. ``index`` is its row in the source dataset (row identity is
    what lets stores of different models be matched)."""
    index: int
    turns: list  # [(role, text)], roles "system" (first only), "user", "assistant"
    meta: dict = field(default_factory=dict)  # other keys of the record (e.g. "skill")

    def messages(self):
        return [{"role": r, "content": t} for r, t in self.turns]


@dataclass
class TokenizedChat:
    index: int
    input_ids: np.ndarray  # int32 [T]
    loss_mask: np.ndarray  # uint8 [T]: 1 where the token is a supervised target


# --------------------------------------------------------------------------------------
# loading and validation

def read_records(path, lines=False):
    """The raw records of a .json (list) or .jsonl file. With ``lines=True`` returns
    ``(records, line numbers)``: each record's 1-based line in a .jsonl file, or None for a
    JSON list."""
    path = os.fspath(path)
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: not valid JSON: {exc}") from None
        return (records, None) if lines else records
    records, linenos = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}: line {lineno} (record {len(records)}) is not valid "
                              f"JSON: {exc}") from None
        linenos.append(lineno)
    return (records, linenos) if lines else records


def _turns_of(record, where):
    if not isinstance(record, dict):
        raise FormatError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        items, rkey, tkey = record["conversations"], "from", "value"
    elif "messages" in record:
        items, rkey, tkey = record["messages"], "role", "content"
    else:
        raise FormatError(f"{where}: no 'conversations' (ShareGPT) or 'messages' list")
    if not isinstance(items, list):
        raise FormatError(f"{where}: the turn list must be a JSON list")
    turns = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or rkey not in item:
            raise FormatError(f"{where}: turn {k} has no '{rkey}' (missing role)")
        role = ROLE_ALIASES.get(str(item[rkey]).lower())
        if role is None:
            raise FormatError(f"{where}: turn {k} has unknown role {item[rkey]!r} "
                              f"(expected one of {sorted(ROLE_ALIASES)})")
        text = item.get(tkey)
        if not isinstance(text, str):
            raise FormatError(f"{where}: turn {k} has no string '{tkey}'")
        turns.append((role, text))
    return turns


def validate_turns(turns, where):
    """Check the turn structure; returns the turns with a leading assistant turn dropped."""
    if turns and turns[0][0] == "system":
        system, rest = [turns[0]], turns[1:]
    else:
        system, rest = [], list(turns)
    if rest and rest[0][0] == "assistant":  # the reference drops a leading non-user turn
        rest = rest[1:]
    if not rest:
        raise FormatError(f"{where}: no user/assistant turns")
    for k, (role, text) in enumerate(rest):
        want = "user" if k % 2 == 0 else "assistant"
        if role != want:
            raise FormatError(f"{where}: turns do not alternate user/assistant: turn "
                              f"{k + len(system)} is {role!r}, expected {want!r}")
        if role == "assistant" and not text.strip():
            raise FormatError(f"{where}: turn {k + len(system)} is an empty assistant turn")
    if not any(r == "assistant" for r, _ in rest):
        raise FormatError(f"{where}: no assistant turn to learn from")
    return system + rest


def load_conversations(source, *, skip_bad_records=False, first_index=0, name=None,
                       lines=None):
    """Validated conversations from a path (.json/.jsonl) or a list of records.

    Returns ``(conversations, n_skipped)``; without ``skip_bad_records`` the first bad
    record raises FormatError naming it (``record N``, and ``line L`` for .jsonl).
    ``first_index`` is the dataset row of the first record (for a slice of a dataset),
    ``name`` what errors call the dataset, ``lines`` the records' lines in it
    (``read_records(path, lines=True)``).
    """
    if isinstance(source, (str, os.PathLike)):
        (records, lines), name = read_records(source, lines=True), name or os.fspath(source)
    else:
        records, name = list(source), name or "dataset"
    out, skipped = [], 0
    for k, (i, record) in enumerate(enumerate(records, first_index)):
        where = f"{name}: line {lines[k]} (record {i})" if lines else f"{name}: record {i}"
        try:
            turns = validate_turns(_turns_of(record, where), where)
        except FormatError as exc:
            if not skip_bad_records:
                raise
            LOG.info("skipping %s", exc)
            skipped += 1
            continue
        meta = {k: v for k, v in record.items() if k not in ("conversations", "messages")}
        out.append(Conversation(i, turns, meta))
    if skipped:
        LOG.warning("%s: skipped %d bad record(s) of %d", name, skipped, len(records))
    return out, skipped


# --------------------------------------------------------------------------------------
# templates

def end_of_turn_token(tokenizer, name_hint=""):
    """The SEP the reference uses for a model in the openchat_3.5 template (method.md 2.2)."""
    hint = (name_hint or getattr(tokenizer, "name_or_path", "") or "").lower()
    vocab = tokenizer.get_vocab()
    if "<|eot_id|>" in vocab:  # Llama-3
        return "<|eot_id|>"
    if "yuan" in hint and "<sep>" in vocab:
        return "<sep>"
    if "internlm2" in hint and "<|im_end|>" in vocab:
        return "<|im_end|>"
    if "gemma" in hint and "<end_of_turn>" in vocab:
        return "<end_of_turn>"
    if tokenizer.eos_token is None:
        raise FormatError(f"tokenizer {hint or '?'} has no eos token to end turns with")
    return tokenizer.eos_token


def render(conv, tokenizer, template="openchat_3.5", sep=None):
    """(text, supervised character spans [(start, end)]) for one conversation."""
    if template == "openchat_3.5":
        sep = sep or end_of_turn_token(tokenizer)
        text, spans = "", []
        for role, content in conv.turns:
            if role == "system":  # openchat_3.5 has an empty system message
                continue
            head = OPENCHAT_ROLES[role] + ": "
            if role == "assistant":
                start = len(text) + len(head)
                text += head + content + sep
                spans.append((start, len(text)))
            else:
                text += head + content + sep
        return text, spans
    if template == "model":
        if not getattr(tokenizer, "chat_template", None):
            raise FormatError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no "
                              "chat template; use template='openchat_3.5'")
        msgs = conv.messages()
        spans = []
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        for k, (role, _) in enumerate(conv.turns):
            if role != "assistant":
                continue
            prefix = tokenizer.apply_chat_template(msgs[:k], tokenize=False,
                                                   add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(msgs[:k + 1], tokenize=False)
            if not (upto.startswith(prefix) and full.startswith(upto)):
                raise FormatError("the chat template does not render conversations as "
                                  "prefixes of each other; cannot locate assistant turns "
                                  f"(record {conv.index})")
            spans.append((len(prefix), len(upto)))
        return full, spans
    raise ValueError(f"template={template!r}: expected one of {TEMPLATES}")


def tokenize(conv, tokenizer, *, template="openchat_3.5", max_length=2048, sep=None):
    """Token ids and the supervision mask of one conversation (a fast tokenizer is needed
    for offsets). Raises FormatError if truncation leaves no supervised token."""
    text, spans = render(conv, tokenizer, template, sep)
    enc = tokenizer(text, add_special_tokens=(template == "openchat_3.5"),
                    return_offsets_mapping=True, truncation=True, max_length=max_length)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(ids), dtype=np.uint8)
    for start, end in spans:
        # a token is a target when its last character lies inside an assistant span (so a
        # piece that carries the space before the answer counts); zero-width tokens (BOS)
        # never are
        inside = (offsets[:, 1] > start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
        mask |= inside.astype(np.uint8)
    # position 0 can never be a target (nothing predicts it)
    if len(mask):
        mask[0] = 0
    if not mask.any():
        raise FormatError(f"record {conv.index}: no supervised token left after truncation to "
                          f"{max_length} tokens")
    return TokenizedChat(conv.index, ids, mask)
