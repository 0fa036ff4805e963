"""The streaming merge engine: Hugging Face folders in, a Hugging Face folder out.

1. The config is read and checked (config.py); every input is opened read-only through the
   fusechat safetensors reader (mmap, headers validated).
2. The whole plan is made before any math (plan.py): the inputs, parameters, output dtype
   and shape of every output tensor, so every error (a missing tensor, a shape or dtype
   mismatch, a missing parameter) comes before any work, and the output header is fixed.
3. Tensors are merged one at a time by the C kernels (multithreaded, GIL released) while
   the previous one is written to its final offset in the output shard by two writer
   threads, and the next one's pages are requested (madvise WILLNEED). Peak memory: two
   output buffers used in turn, the top-k keys (or DARE flags, SCE kept deltas) of one
   tensor and the kernels' block buffers, all kept from one tensor to the next and freed
   at the end; inputs are only mapped.
4. The output folder is assembled in a temporary folder next to OUT (shards + index,
   config.json with dtype and torch_dtype, tokenizer and generation config, the merge
   config, a model card) and renamed into place only when complete.
"""
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import _C
from .._C import merge_tensor as merge_kernel
from .. import safetensors as st
from ..progress import tqdm
from .config import load_config
from .lora import folder_of, open_model
from .plan import roles, plan
from .templates import resolve as resolve_template

LOG = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer.model", "added_tokens.json", "merges.txt", "vocab.json",
                   "chat_template.jinja", "chat_template.json")
TORCH_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


def parse_shard_size(size):
    """'5G', '500M', '5GB', '2GiB' or an int (bytes)."""
    if isinstance(size, str) and size.strip()[-1:].upper() in "KMGT" and size.strip()[-1:].isalpha():
        size = size.strip() + "B"
    return st.parse_size(size)


# Writer threads. Writing a new file's pages costs CPU time (copying into fresh page-cache
# pages, which a virtual machine's host may first have to back); a big tensor is written as
# WRITERS chunks in parallel, so the writing does not hold the merge back on one core.
WRITERS = 2
_SPLIT_BYTES = 8 << 20


def _submit_write(io, writer, name, arr):
    if arr.nbytes < _SPLIT_BYTES or WRITERS == 1:
        return [io.submit(writer.write, name, arr)]
    flat = np.ascontiguousarray(arr).reshape(-1)
    step = -(-flat.size // WRITERS)
    return [io.submit(writer.write, name, flat[k:k + step], k * flat.itemsize)
            for k in range(0, flat.size, step)]


class _OutBuffers:
    """Two output buffers used in turn: the tensor merged into one is written to disk while
    the next is merged into the other, and their pages are faulted in once per merge, not
    once per tensor."""

    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.bufs = [None, None]

    def view(self, i, dtype, shape):
        if self.bufs[i % 2] is None:
            self.bufs[i % 2] = np.empty(self.nbytes, np.uint8)
        count = int(np.prod(shape, dtype=np.int64))
        return self.bufs[i % 2][:count * dtype.itemsize].view(dtype).reshape(shape)


def _merge_job(job, files, method, seed, threads, vocab=None, out=None, ctx=None):
    if job.copy_from:
        return np.asarray(files[job.copy_from[0]].get(job.copy_from[1]))
    if job.permute:
        srcs = ([job.base] if job.base else []) + list(job.inputs)
        rows = vocab.permute(job.name, {p: files[p].get(n) for p, n in srcs})
        base = rows[job.base[0]] if job.base else None
        xs = [rows[p] for p, _ in job.inputs]
    else:
        base = files[job.base[0]].get(job.base[1]) if job.base else None
        xs = [files[p].get(n) for p, n in job.inputs]
    if method.base == "required" and not xs:
        return base.astype(st.numpy_dtype(job.out_dtype))
    # the plan resolved and checked every parameter: the kernel directly (merge_tensors, the
    # notebook helper, would check them again for every tensor)
    try:
        return merge_kernel(method.name, base, xs, st.numpy_dtype(job.out_dtype), job.models,
                            job.glob, int(seed), job.name, int(threads), out, ctx)
    except ValueError as exc:
        raise type(exc)(f"tensor {job.name!r} (models "
                        f"{', '.join(p for p, _ in job.inputs)}): {exc}") from None


def run(config, out_path, *, overwrite=False, out_shard_size="5GB", threads=0, seed=0,
        dtype=None, quiet=False):
    """Merge and write the output folder; returns its path. See the module docstring."""
    cfg = load_config(config)
    out_path = os.path.abspath(os.fspath(out_path))
    if os.path.lexists(out_path) and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    if dtype is not None:
        from .config import _dtype
        dtype = _dtype(dtype, "dtype")
    shard_bytes = parse_shard_size(out_shard_size)
    files = {p: open_model(p) for p in cfg.model_paths()}
    entries = cfg.models or [e for sl in cfg.slices for e in sl.sources]
    base_entry, inputs = roles(cfg, entries)
    base_path = base_entry.path if base_entry else None
    donor = folder_of(cfg.base or entries[0].path)
    template = resolve_template(cfg.chat_template, cfg.model_paths(), cfg.base)
    vocab = None
    if cfg.tokenizer_source:
        from .vocab import VocabPlan
        vocab = VocabPlan(cfg.tokenizer_source, base_path, list(dict.fromkeys(
            ([base_path] if base_path else []) + [e.path for e in inputs])),
            cfg.tokens, cfg.pad_to_multiple_of)
    jobs = plan(cfg, files, dtype, vocab)
    parent = os.path.dirname(out_path)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temps(out_path)
    tmp = tempfile.mkdtemp(prefix=_temp_prefix(out_path) + f"{os.getpid()}-", dir=parent)
    t0 = time.perf_counter()
    try:
        entries = [(j.name, j.out_dtype, j.out_shape) for j in jobs]
        sizes = [int(np.prod(j.out_shape, dtype=np.int64)) * st.numpy_dtype(j.out_dtype).itemsize
                 for j in jobs]
        total = sum(sizes)
        outs = _OutBuffers(max(sizes, default=0))
        writer = st.Writer(tmp, entries, {"format": "pt"}, max_shard_size=shard_bytes)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="merge", disable=quiet)
        # this run's merge context: the kernels reuse their big buffers between tensors
        ctx = _C.MergeContext(keep_buffers=True)
        try:
            with ThreadPoolExecutor(WRITERS) as io:
                pending = []
                for i, job in enumerate(jobs):
                    if i + 1 < len(jobs):
                        nxt = jobs[i + 1]
                        for p, n in set((nxt.base,) + nxt.inputs + (nxt.copy_from,)) - {None}:
                            files[p].prefetch(n)
                    out = outs.view(i, st.numpy_dtype(job.out_dtype), job.out_shape)
                    arr = _merge_job(job, files, cfg.method, seed, threads, vocab, out, ctx)
                    for f in pending:
                        f.result()
                    bar.update(pending_bytes if pending else 0)
                    pending = _submit_write(io, writer, job.name, arr)
                    pending_bytes = arr.nbytes
                for f in pending:
                    f.result()
                bar.update(pending_bytes if pending else 0)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            ctx.keep_buffers(False)  # free them now, not when the context is collected
            bar.close()
        streamed, fell_back = ctx.stream_counts()
        if fell_back:
            LOG.info("streaming top-k: %d tensors in one pass, %d fell back to the exact passes",
                     streamed, fell_back)
        _write_side_files(tmp, cfg, donor, jobs, seed, vocab, template)
        _move_into_place(tmp, out_path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOG.info("merged %d tensors into %s in %.1f s", len(jobs), out_path, time.perf_counter() - t0)
    return out_path


def _temp_prefix(out_path):
    return f".{os.path.basename(out_path)}.fusechat-tmp-"


def _remove_stale_temps(out_path):
    """Remove the temporary folders that killed merges into out_path left behind (their
    process id, in the name, is no longer running)."""
    parent, prefix = os.path.dirname(out_path), _temp_prefix(out_path)
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (another merge into the same path)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        LOG.info("removing %s, left by an interrupted merge", name)
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _move_into_place(tmp, out_path, overwrite):
    if os.path.lexists(out_path):
        if not overwrite:
            raise FileExistsError(f"{out_path} appeared during the merge; not replaced")
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_path)}.old-", dir=os.path.dirname(out_path))
        os.rename(out_path, os.path.join(old, "out"))
        os.rename(tmp, out_path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_path)


def _write_side_files(tmp, cfg, donor, jobs, seed, vocab, template):
    import yaml

    out_dtypes = {j.out_dtype for j in jobs if not j.copy_from}
    cfg_path = os.path.join(donor, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            model_cfg = json.load(f)
        if len(out_dtypes) == 1 and out_dtypes <= set(TORCH_DTYPES):
            # transformers 5 reads "dtype" (and "torch_dtype" only where "dtype" is absent);
            # older versions read "torch_dtype": both name the merged dtype
            model_cfg["dtype"] = model_cfg["torch_dtype"] = TORCH_DTYPES[out_dtypes.pop()]
        if vocab:
            model_cfg["vocab_size"] = vocab.rows
        if cfg.slices and "num_hidden_layers" in model_cfg:
            model_cfg["num_hidden_layers"] = sum(
                sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0] for sl in cfg.slices)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(model_cfg, f, indent=2)
            f.write("\n")
    tok_donor = vocab.donor if vocab else donor
    for name in TOKENIZER_FILES:
        src = os.path.join(tok_donor, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(tmp, name))
    if vocab:
        vocab.write_tokenizer(tmp)
    if template is not None:
        _write_chat_template(tmp, template)
    gen = os.path.join(donor, "generation_config.json")
    if os.path.isfile(gen):
        shutil.copyfile(gen, os.path.join(tmp, "generation_config.json"))
    resolved = dict(cfg.raw)
    if cfg.base:
        resolved["base_model"] = str(cfg.base)
    if "models" in resolved:
        resolved["models"] = [dict(m, model=str(e.path)) for m, e in zip(resolved["models"], cfg.models)]
    if "slices" in resolved:
        resolved["slices"] = [
            dict(raw, sources=[dict(r, model=str(e.path)) for r, e in zip(raw["sources"], sl.sources)])
            for raw, sl in zip(resolved["slices"], cfg.slices)]
    text = yaml.safe_dump(resolved, sort_keys=False)
    with open(os.path.join(tmp, "mergekit_config.yml"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(_model_card(cfg, text, seed))


def _write_chat_template(tmp, template):
    """chat_template.jinja (read first by transformers, written there by mergekit); a
    template the copied tokenizer files carry is removed so that only this one is read."""
    with open(os.path.join(tmp, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(template)
    old = os.path.join(tmp, "chat_template.json")
    if os.path.exists(old):
        os.remove(old)
    tc_path = os.path.join(tmp, "tokenizer_config.json")
    if os.path.isfile(tc_path):
        with open(tc_path, encoding="utf-8") as f:
            tc = json.load(f)
        if tc.pop("chat_template", None) is not None:
            with open(tc_path, "w", encoding="utf-8") as f:
                json.dump(tc, f, indent=2, ensure_ascii=False)
                f.write("\n")


def _model_card(cfg, text, seed):
    from .. import __version__

    models = "\n".join(f"* {p}" for p in cfg.model_paths())
    rnd = f" Random masks use seed {seed}." if cfg.method.randomized else ""
    return (f"---\ntags:\n- merge\n- fusechat\n---\n# Merged model\n\n"
            f"Merged with fusechat {__version__} (`fusechat merge`) using the "
            f"**{cfg.method.name}** method"
            f"{f' with base model {cfg.base}' if cfg.base else ''}.{rnd}\n\n"
            f"## Models\n\n{models}\n\n## Configuration\n\n```yaml\n{text}```\n")
