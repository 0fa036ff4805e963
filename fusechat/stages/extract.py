"""Stage 1a: run a causal LM over a chat dataset and keep its top-K next-token distributions.

``extract(model, data, out)`` tokenizes every conversation (the fixed openchat_3.5 template
with the model's own end-of-turn token, as the reference does, or the model's own chat
template), runs the model without gradients over length-sorted batches (padding only within
a batch, never to 2048), and writes a TopK store (``fusechat.stages.store``) of kind "extracted":
per position the top-K ids and raw logits, the log-sum-exp of all logits (so that the top-K
become absolute log-probabilities, which the byte projection needs), the CE of the next token
where it is supervised, and per sample the mean CE over its supervised tokens. Top-K and CE come from one pass of the
fused kernel (``fusechat.torch.topk_and_ce``) over the logits, not ``torch.topk`` plus a
separate cross-entropy.

Scaling out: ``shard=(i, n)`` processes the contiguous slice i of n of the dataset rows (the
reference's split: floor(N/n) rows each, the last shard takes the remainder) and writes the
complete store ``OUT/part-0000i-of-0000n``; ``fusechat.stages.store.open_store(OUT)`` reads the
parts as one store. Under torchrun/accelerate the shard defaults to (RANK, WORLD_SIZE), one
process per rank. A finished output with the same settings is skipped when rerun (resume).
"""
import errno
import logging
import os

import numpy as np

from . import chat
from ..errors import FormatError
from ..progress import tqdm
from .store import TopKStore, TopKStoreWriter, part_name

LOG = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float32")
# samples are length-sorted within windows of this many rows and written in dataset order,
# so memory stays bounded while padding stays within a batch of similar lengths
SORT_WINDOW = 4096


def tokenizer_fingerprint(tokenizer):
    """The tokenizer fingerprint stores are checked against (``fusechat.Vocab``'s SHA-256 of
    the model type, every piece and every flag)."""
    from ..vocab import Vocab

    return Vocab.from_tokenizer(tokenizer).fingerprint


def parse_shard(text):
    """``"i/n"`` -> (i, n), with 0 <= i < n."""
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: expected i/n, e.g. 0/4") from None
    return check_shard((i, n))


def check_shard(shard):
    i, n = (int(x) for x in shard)
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    return i, n


def shard_from_env():
    """(RANK, WORLD_SIZE) when launched by torchrun/accelerate with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return check_shard((int(os.environ.get("RANK", "0")), world))


def shard_range(n_rows, shard):
    """Rows [start, stop) of shard (i, n): floor(N/n) rows each, the last takes the rest."""
    i, n = shard
    size = n_rows // n
    return i * size, (n_rows if i == n - 1 else (i + 1) * size)


def _torch_dtype(dtype):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    return getattr(torch, dtype)


def resolve(model, tokenizer):
    """(name, tokenizer, vocab size) without loading weights: enough to tell whether an
    existing output is finished."""
    from transformers import AutoConfig, AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if not os.path.exists(name):
            raise FileNotFoundError(errno.ENOENT, "model folder not found", name)
        if not os.path.isdir(name):
            raise NotADirectoryError(errno.ENOTDIR, "not a model folder", name)
        config = AutoConfig.from_pretrained(name)
        vocab_size = int(config.get_text_config().vocab_size)
    else:
        name = getattr(model, "name_or_path", "") or type(model).__name__
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
    if tokenizer is None:
        if not os.path.isdir(name):
            raise ValueError("tokenizer= is needed when the model is given as an object")
        tokenizer = name
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("extract needs a fast tokenizer (offsets locate the assistant turns)")
    return name, tokenizer, vocab_size


def load_model(model, dtype, device):
    """(model, input device): the model in eval mode on ``device`` in ``dtype`` (a loaded
    model is moved and cast in place). ``device="auto"`` spreads a model too big for one GPU
    over all visible GPUs (``device_map="auto"``, the reference's setting for 72B models); a
    loaded model that already has a device map is left where it is."""
    from transformers import AutoModelForCausalLM

    tdtype = _torch_dtype(dtype)
    if isinstance(model, (str, os.PathLike)):
        extra = {"device_map": "auto"} if device == "auto" else {}
        model = AutoModelForCausalLM.from_pretrained(os.fspath(model), dtype=tdtype, **extra)
    if getattr(model, "hf_device_map", None) is None:
        if device == "auto":
            raise ValueError("device='auto' needs a model path (or a model loaded with a "
                             "device_map)")
        model.to(device=device, dtype=tdtype)
    model.eval()
    # inputs go where the embeddings are (the first device of a dispatched model)
    return model, model.get_input_embeddings().weight.device


def tokenize_all(convs, tokenizer, *, template, max_length, sep, skip_bad_records):
    """TokenizedChat per conversation; a conversation whose supervised tokens truncate away
    raises FormatError naming its record, or is skipped."""
    out = []
    for conv in convs:
        try:
            out.append(chat.tokenize(conv, tokenizer, template=template,
                                     max_length=max_length, sep=sep))
        except FormatError:
            if not skip_bad_records:
                raise
    return out


def pad_batch(group, pad_id):
    """Right-padded input_ids, attention_mask and labels (-100 where not supervised) as
    int64 tensors [B, L]."""
    import torch

    width = max(len(t.input_ids) for t in group)
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(group), width), dtype=torch.long)
    labels = torch.full((len(group), width), -100, dtype=torch.long)
    for b, t in enumerate(group):
        n = len(t.input_ids)
        row = torch.from_numpy(t.input_ids.astype(np.int64))
        ids[b, :n] = row
        attn[b, :n] = 1
        labels[b, :n] = torch.where(torch.from_numpy(t.loss_mask.astype(bool)), row, -100)
    return ids, attn, labels


def run_batch(model, group, *, k, pad_id, device, topk_fn=None):
    """Forward one batch; per sample (topk_ids, topk_logits, token_ce, seq_ce, lognorm) as
    NumPy, unpadded. ``topk_fn(logits, labels, k)`` replaces the fused kernel (benchmarks only;
    without a fifth result the log-normaliser is NaN)."""
    import torch

    ids, attn, labels = pad_batch(group, pad_id)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        res = (topk_fn or _fused_topk)(logits, labels.to(device), k)
    tk_ids, tk_logits, tce, sce = (x.cpu().numpy() for x in res[:4])
    lnorm = res[4].cpu().numpy() if len(res) > 4 else np.full(tce.shape, np.nan, np.float32)
    out = []
    for b, t in enumerate(group):
        n = len(t.input_ids)
        out.append((tk_ids[b, :n], tk_logits[b, :n], tce[b, :n], float(sce[b]), lnorm[b, :n]))
    return out


def _fused_topk(logits, labels, k):
    """One pass of the fused kernel: top-k, token CE and sequence CE (NaN when a sequence has
    no supervised token, as the reference's 0/0)."""
    from ..torch import topk_and_ce

    r = topk_and_ce(logits, labels, k, shift=True)
    seq = r.seq_ce.masked_fill(r.seq_has == 0, float("nan"))
    return r.ids, r.logits, r.token_ce, seq, log_normaliser(logits)


def log_normaliser(logits, chunk_bytes=1 << 28):
    """log-sum-exp over the vocabulary of [..., V] logits, in float32, a few rows at a time
    (a float32 copy of a whole batch's logits would double its memory)."""
    import torch

    v = logits.shape[-1]
    flat = logits.detach().reshape(-1, v)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = max(1, chunk_bytes // (4 * v))
    for a in range(0, flat.shape[0], step):
        out[a:a + step] = torch.logsumexp(flat[a:a + step].float(), dim=-1)
    return out.reshape(logits.shape[:-1])


def _settings(name, fingerprint, vocab_size, template, k, max_length, logits_dtype, dtype,
              shard, n_rows):
    info = {"template": template, "k": k, "max_length": max_length, "dtype": dtype,
            "n_rows": n_rows}
    if shard is not None:
        info["shard"] = f"{shard[0]}/{shard[1]}"
    return dict(model=name, tokenizer_fingerprint=fingerprint, vocab_size=vocab_size,
                logits_dtype=logits_dtype, info=info)


def _finished(path, settings):
    """True when a complete store with these settings is at path; FileExistsError when one
    with other settings is."""
    if not os.path.exists(os.path.join(path, "manifest.json")):
        if os.path.exists(path):
            raise FileExistsError(f"{path}: exists but is not a TopK store (pass overwrite=True)")
        return False
    with TopKStore(path) as old:
        m = old.manifest
    have = {"model": m["model"], "tokenizer_fingerprint": m["tokenizer_fingerprint"],
            "vocab_size": m.get("vocab_size"), "logits_dtype": m["dtypes"]["topk_logits"],
            "info": {key: m.get("info", {}).get(key) for key in settings["info"]}}
    diff = [key for key in have if have[key] != settings[key]]
    if diff:
        raise FileExistsError(f"{path}: a store with other settings ({', '.join(diff)}) exists; "
                              "pass overwrite=True to replace it")
    return True


def extract(model, data, out, *, tokenizer=None, template="openchat_3.5", k=10, max_length=2048,
            batch_size=8, dtype="bfloat16", device="cpu", shard=None, logits_dtype="F16",
            skip_bad_records=False, overwrite=False, quiet=False, _topk_fn=None):
    """Write the TopK store of ``model`` (a Hugging Face folder or a loaded causal LM, with
    ``tokenizer`` then required) on ``data`` (a .json/.jsonl path or a list of records).

    Returns the path written (``out``, or ``out/part-0000i-of-0000n`` with ``shard``).
    Raises FormatError naming the record index on a bad record unless ``skip_bad_records``.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if template not in chat.TEMPLATES:
        raise ValueError(f"template={template!r}: expected one of {chat.TEMPLATES}")
    shard = check_shard(shard) if shard is not None else shard_from_env()
    if device == "cuda" and os.environ.get("LOCAL_RANK") is not None:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    records, lines = (chat.read_records(data, lines=True) if isinstance(data, (str, os.PathLike))
                      else (list(data), None))
    start, stop = shard_range(len(records), shard) if shard else (0, len(records))
    path = os.path.join(os.fspath(out), part_name(*shard)) if shard else os.fspath(out)

    _torch_dtype(dtype)  # checked before any loading
    name, tokenizer, vocab_size = resolve(model, tokenizer)
    settings = _settings(os.path.basename(name.rstrip("/")) or name,
                         tokenizer_fingerprint(tokenizer), vocab_size, template, int(k),
                         int(max_length), logits_dtype, dtype, shard, len(records))
    if not overwrite and _finished(path, settings):
        LOG.info("%s: already extracted, skipped", path)
        return path

    model, input_device = load_model(model, dtype, device)
    where = os.fspath(data) if isinstance(data, (str, os.PathLike)) else "dataset"
    convs, _ = chat.load_conversations(records[start:stop], skip_bad_records=skip_bad_records,
                                       first_index=start, name=where,
                                       lines=lines[start:stop] if lines else None)
    sep = chat.end_of_turn_token(tokenizer, name) if template == "openchat_3.5" else None
    tokenized = tokenize_all(convs, tokenizer, template=template, max_length=max_length,
                             sep=sep, skip_bad_records=skip_bad_records)
    n_bad = (stop - start) - len(tokenized)
    if n_bad:
        LOG.warning("%s: rows %d..%d: skipped %d bad record(s)", where, start, stop, n_bad)
    pad_id = next(x for x in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if x is not None)
    settings["info"]["skipped_records"] = n_bad
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with TopKStoreWriter(path, k=k, kind="extracted", overwrite=overwrite, **settings) as w, \
            tqdm(total=len(tokenized), desc=f"extract {os.path.basename(path)}", unit="sample",
                 disable=quiet) as bar:
        for w0 in range(0, len(tokenized), SORT_WINDOW):
            window = tokenized[w0:w0 + SORT_WINDOW]
            # longest first, so an out-of-memory batch shows up at once
            order = sorted(range(len(window)), key=lambda j: -len(window[j].input_ids))
            results = [None] * len(window)
            for b0 in range(0, len(order), batch_size):
                idx = order[b0:b0 + batch_size]
                for j, r in zip(idx, run_batch(model, [window[j] for j in idx], k=k,
                                               pad_id=pad_id, device=input_device,
                                               topk_fn=_topk_fn)):
                    results[j] = r
                bar.update(len(idx))
            for t, (tk_ids, tk_logits, tce, sce, lnorm) in zip(window, results):
                w.add(t.index, t.input_ids, t.loss_mask, tk_ids, tk_logits, tce, sce,
                      topk_lognorm=lnorm)
    LOG.info("%s: %d samples (%d bad records skipped)", path, len(tokenized), n_bad)
    return path
