"""The streaming merge engine: Hugging Face folders in, a Hugging Face folder out.

1. The config is read and checked (config.py); every input is opened read-only through the
   fusechat safetensors reader (mmap, headers validated).
2. The whole plan is made before any math: for every tensor of the base model (in its file
   order) the inputs, parameters, output dtype and shape are resolved, so every error (a
   missing tensor, a shape or dtype mismatch, a missing parameter) comes before any work,
   and the output header is fixed.
3. Tensors are merged one at a time by the C kernels (multithreaded, GIL released) while
   the previous one is written to its final offset in the output shard by a second thread,
   and the next one's pages are requested (madvise WILLNEED). Peak memory: two output
   tensors plus the kernels' block buffers; inputs are only mapped.
4. The output folder is assembled in a temporary folder next to OUT (shards + index,
   config.json with torch_dtype, tokenizer and generation config, the merge config, a model
   card) and renamed into place only when complete.
"""
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import safetensors as st
from ..errors import ConfigError
from ..progress import tqdm
from .config import layer_index, load_config, lookup
from .methods import MODEL_DEFAULTS, MODEL_FIELDS, REQUIRED, check_della
from .tensors import merge_tensors

LOG = logging.getLogger(__name__)

EMBED_NAMES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out")
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer.model", "added_tokens.json", "merges.txt", "vocab.json",
                   "chat_template.jinja", "chat_template.json")
TORCH_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}
FLOATS = ("F16", "BF16", "F32", "F64")
# methods that anchor on the base: a larger non-base embedding is cut to the base's rows
BASE_ANCHORED_EMBED = {"task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
                       "breadcrumbs_ties", "della", "della_linear", "sce", "varm", "nearswap"}


@dataclass
class Job:
    name: str
    out_dtype: str
    out_shape: tuple
    copy_from: str = None          # model path: copied unchanged (non-float tensors)
    base: str = None               # model path of the base input
    inputs: tuple = ()             # model paths of the other inputs, in order
    params: dict = None            # per-model lists and global scalars for merge_tensors
    permute: bool = False          # embedding rows re-laid out by token (tokenizer_source)


def parse_shard_size(size):
    """'5G', '500M', '5GB', '2GiB' or an int (bytes)."""
    if isinstance(size, str) and size.strip()[-1:].upper() in "KMGT" and size.strip()[-1:].isalpha():
        size = size.strip() + "B"
    return st.parse_size(size)


def _is_embed(name, shape):
    return len(shape) == 2 and any(k in name for k in EMBED_NAMES)


def _layer_t(names):
    layers = [i for i in (layer_index(n) for n in names) if i is not None]
    n_layers = max(layers) + 1 if layers else 0

    def t_of(name):
        i = layer_index(name)
        if i is None:
            return 0.0
        return i / (n_layers - 1) if n_layers > 1 else 1.0
    return t_of


def _roles(cfg):
    """(base path or None, [(input path, its ModelEntry)]) as the method sees them."""
    m = cfg.method
    entries = [e for e in cfg.models]
    if m.base == "none":
        if cfg.base and cfg.base not in [e.path for e in entries]:
            from .config import ModelEntry
            entries.append(ModelEntry(cfg.base, {}))
        return None, entries
    return cfg.base, [e for e in entries if e.path != cfg.base]


def plan(cfg, files, dtype=None, vocab=None):
    """The list of Jobs, in the reference model's storage order. vocab: a VocabPlan when
    tokenizer_source is set."""
    base, inputs = _roles(cfg)
    ref_path = base or inputs[0].path
    ref = files[ref_path]
    names = ref.keys()
    t_of = _layer_t(names)
    m = cfg.method
    jobs = []
    for name in names:
        info = ref.info(name)
        for e in inputs + ([] if base is None else []):
            if name not in files[e.path]:
                raise ConfigError(f"tensor {name!r} is missing from model {e.path}")
        if info.dtype not in FLOATS:
            jobs.append(Job(name, info.dtype, tuple(info.shape), copy_from=ref_path))
            continue
        shapes = {p: tuple(files[p].info(name).shape) for p in [ref_path] + [e.path for e in inputs]}
        for p in shapes:
            d = files[p].info(name).dtype
            if d not in FLOATS:
                raise ConfigError(f"tensor {name!r}: model {p} stores it as {d}, not a float")
        out_shape = tuple(info.shape)
        use = list(inputs)
        permute = vocab is not None and _is_embed(name, out_shape) and not all(
            vocab.identity_for(p, s[0]) for p, s in shapes.items())
        if permute:
            if len({s[1] for s in shapes.values()}) > 1:
                raise ConfigError(f"tensor {name!r}: hidden sizes differ between models")
            out_shape = (len(vocab.tokens), out_shape[1])
        elif len(set(shapes.values())) > 1:
            if not _is_embed(name, out_shape):
                detail = ", ".join(f"{p}: {list(s)}" for p, s in shapes.items())
                raise ConfigError(f"tensor {name!r}: shapes differ between models ({detail})")
            if m.name in BASE_ANCHORED_EMBED and base is not None:
                dropped = [e.path for e in use if any(a < b for a, b in zip(shapes[e.path], out_shape))]
                use = [e for e in use if e.path not in dropped]
                LOG.warning("tensor %s: vocabulary sizes differ (%s); larger inputs are cut to "
                            "the base's %s rows%s", name,
                            ", ".join(f"{p}: {s[0]}" for p, s in shapes.items()), out_shape[0],
                            f"; skipped (smaller than the base): {', '.join(dropped)}" if dropped else "")
            else:
                out_shape = tuple(min(s[i] for s in shapes.values()) for i in range(2))
                LOG.warning("tensor %s: vocabulary sizes differ (%s); every input is cut to the "
                            "common %s submatrix", name,
                            ", ".join(f"{p}: {s[0]}" for p, s in shapes.items()), list(out_shape))
        t = t_of(name)
        params = {}
        for field in MODEL_FIELDS:
            if field not in m.tensor:
                continue
            vals = []
            for e in use:
                v = lookup(field, name, t, e.params, cfg.params)
                if v is None:
                    v = m.tensor[field]
                    if v is REQUIRED:
                        raise ConfigError(f"tensor {name!r}: {m.name} needs {field} for model "
                                          f"{e.path} (no value or filter matches)")
                vals.append(v)
            params[field] = vals
        for i, e in enumerate(use):
            get = lambda f: params[f][i] if f in params else MODEL_DEFAULTS[f]  # noqa: E731
            check_della(m, get("density"), get("epsilon"), f"tensor {name!r}, model {e.path}",
                        ConfigError)
        for g, default in m.glob.items():
            v = lookup(g, name, t, cfg.params)
            if v is None:
                if default is REQUIRED:
                    raise ConfigError(f"tensor {name!r}: {m.name} needs the parameter {g}")
                continue
            params[g] = v
        out_dtype = dtype or cfg.out_dtype or cfg.dtype or info.dtype
        jobs.append(Job(name, out_dtype, out_shape, base=base,
                        inputs=tuple(e.path for e in use), params=params, permute=permute))
    return jobs


def _view(f, name, shape):
    a = f.get(name)
    if tuple(a.shape) != tuple(shape):  # embedding cut to the top-left submatrix
        a = np.ascontiguousarray(a[tuple(slice(0, s) for s in shape)])
    return a


def _merge_job(job, files, method, seed, threads, vocab=None):
    if job.copy_from:
        return np.asarray(files[job.copy_from].get(job.name))
    if job.permute:
        paths = ([job.base] if job.base else []) + list(job.inputs)
        rows = vocab.permute(job.name, {p: files[p].get(job.name) for p in paths})
        base = rows[job.base] if job.base else None
        xs = [rows[p] for p in job.inputs]
    else:
        base = _view(files[job.base], job.name, job.out_shape) if job.base else None
        xs = [_view(files[p], job.name, job.out_shape) for p in job.inputs]
    if method.base == "required" and not xs:
        return base.astype(st.numpy_dtype(job.out_dtype))
    try:
        return merge_tensors(method.name, base, xs, out_dtype=st.numpy_dtype(job.out_dtype),
                             seed=seed, tensor_name=job.name, threads=threads, **job.params)
    except ValueError as exc:
        raise type(exc)(f"tensor {job.name!r} (models {', '.join(job.inputs)}): {exc}") from None


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
    if cfg.slices:
        raise ConfigError("slices are not supported yet by fusechat merge; use models:")
    shard_bytes = parse_shard_size(out_shard_size)
    files = {p: st.open(p) for p in cfg.model_paths()}
    base_path, inputs = _roles(cfg)
    donor = cfg.base or cfg.models[0].path
    vocab = None
    if cfg.tokenizer_source:
        from .vocab import VocabPlan
        vocab = VocabPlan(cfg.tokenizer_source, base_path,
                          ([base_path] if base_path else []) + [e.path for e in inputs])
    jobs = plan(cfg, files, dtype, vocab)
    parent = os.path.dirname(out_path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_path)}.fusechat-tmp-", dir=parent)
    t0 = time.perf_counter()
    try:
        entries = [(j.name, j.out_dtype, j.out_shape) for j in jobs]
        total = sum(int(np.prod(j.out_shape, dtype=np.int64)) * st.numpy_dtype(j.out_dtype).itemsize
                    for j in jobs)
        writer = st.Writer(tmp, entries, {"format": "pt"}, max_shard_size=shard_bytes)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="merge", disable=quiet)
        try:
            with ThreadPoolExecutor(1) as io:
                pending = None
                for i, job in enumerate(jobs):
                    if i + 1 < len(jobs):
                        nxt = jobs[i + 1]
                        for p in set((nxt.base,) + nxt.inputs + (nxt.copy_from,)) - {None}:
                            files[p].prefetch(nxt.name)
                    arr = _merge_job(job, files, cfg.method, seed, threads, vocab)
                    if pending is not None:
                        pending.result()
                        bar.update(pending_bytes)
                    pending = io.submit(writer.write, job.name, arr)
                    pending_bytes = arr.nbytes
                if pending is not None:
                    pending.result()
                    bar.update(pending_bytes)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        _write_side_files(tmp, cfg, donor, jobs, seed, vocab)
        _move_into_place(tmp, out_path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    LOG.info("merged %d tensors into %s in %.1f s", len(jobs), out_path, time.perf_counter() - t0)
    return out_path


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


def _write_side_files(tmp, cfg, donor, jobs, seed, vocab):
    import yaml

    out_dtypes = {j.out_dtype for j in jobs if not j.copy_from}
    cfg_path = os.path.join(donor, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            model_cfg = json.load(f)
        if len(out_dtypes) == 1:
            model_cfg["torch_dtype"] = TORCH_DTYPES.get(out_dtypes.pop(), model_cfg.get("torch_dtype"))
        for j in jobs:
            if _is_embed(j.name, j.out_shape) and "embed" in j.name and \
                    model_cfg.get("vocab_size", j.out_shape[0]) != j.out_shape[0]:
                model_cfg["vocab_size"] = j.out_shape[0]
        if vocab:
            model_cfg["vocab_size"] = len(vocab.tokens)
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
    gen = os.path.join(donor, "generation_config.json")
    if os.path.isfile(gen):
        shutil.copyfile(gen, os.path.join(tmp, "generation_config.json"))
    resolved = dict(cfg.raw)
    if cfg.base:
        resolved["base_model"] = cfg.base
    if "models" in resolved:
        resolved["models"] = [dict(m, model=e.path) for m, e in zip(resolved["models"], cfg.models)]
    text = yaml.safe_dump(resolved, sort_keys=False)
    with open(os.path.join(tmp, "mergekit_config.yml"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(_model_card(cfg, text, seed))


def _model_card(cfg, text, seed):
    from .. import __version__

    models = "\n".join(f"* {p}" for p in cfg.model_paths())
    rnd = f" Random masks use seed {seed}." if cfg.method.randomized else ""
    return (f"---\ntags:\n- merge\n- fusechat\n---\n# Merged model\n\n"
            f"Merged with fusechat {__version__} (`fusechat merge`) using the "
            f"**{cfg.method.name}** method"
            f"{f' with base model {cfg.base}' if cfg.base else ''}.{rnd}\n\n"
            f"## Models\n\n{models}\n\n## Configuration\n\n```yaml\n{text}```\n")
