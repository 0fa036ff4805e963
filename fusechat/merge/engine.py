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
    copy_from: tuple = None        # (model path, tensor): copied unchanged (non-float tensors)
    base: tuple = None             # (model path, tensor name) of the base input
    inputs: tuple = ()             # (model path, tensor name) of the other inputs, in order
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


def _roles(cfg, entries):
    """(base entry or None, [input entries]) as the method sees them."""
    from .config import ModelEntry

    m = cfg.method
    if m.base == "none":
        if cfg.base and cfg.base not in [e.path for e in entries]:
            entries = entries + [ModelEntry(cfg.base, {})]
        return None, list(entries)
    base = next((e for e in entries if e.path == cfg.base), None)
    if cfg.base and base is None:
        base = ModelEntry(cfg.base, {})
    return base, [e for e in entries if e.path != cfg.base]


class _Planner:
    """Builds one Job per output tensor (see plan())."""

    def __init__(self, cfg, files, dtype, vocab):
        self.cfg, self.files, self.dtype, self.vocab = cfg, files, dtype, vocab
        self.m = cfg.method

    def job(self, out_name, base, inputs, t, slice_params=None):
        """base: (entry, tensor name) or None; inputs: [(entry, tensor name)]."""
        cfg, files, m = self.cfg, self.files, self.m
        ref_path, ref_name = (base or inputs[0])[0].path, (base or inputs[0])[1]
        for e, name in ([base] if base else []) + inputs:
            if name not in files[e.path]:
                raise ConfigError(f"tensor {name!r} is missing from model {e.path}")
        info = files[ref_path].info(ref_name)
        if info.dtype not in FLOATS:
            return Job(out_name, info.dtype, tuple(info.shape), copy_from=(ref_path, ref_name))
        srcs = ([base] if base else []) + inputs
        shapes = {}
        for e, name in srcs:
            i = files[e.path].info(name)
            if i.dtype not in FLOATS:
                raise ConfigError(f"tensor {name!r}: model {e.path} stores it as {i.dtype}, "
                                  "not a float")
            shapes[e.path] = tuple(i.shape)
        out_shape = tuple(info.shape)
        use = list(inputs)
        vocab = self.vocab
        permute = vocab is not None and _is_embed(out_name, out_shape) and not all(
            vocab.identity_for(p, sh[0]) for p, sh in shapes.items())
        if permute:
            if len({sh[1] for sh in shapes.values()}) > 1:
                raise ConfigError(f"tensor {out_name!r}: hidden sizes differ between models")
            out_shape = (len(vocab.tokens), out_shape[1])
        elif len(set(shapes.values())) > 1:
            if not _is_embed(out_name, out_shape):
                detail = ", ".join(f"{p}: {list(sh)}" for p, sh in shapes.items())
                raise ConfigError(f"tensor {out_name!r}: shapes differ between models ({detail})")
            sizes = ", ".join(f"{p}: {sh[0]}" for p, sh in shapes.items())
            if m.name in BASE_ANCHORED_EMBED and base is not None:
                dropped = [e.path for e, _ in use
                           if any(a < b for a, b in zip(shapes[e.path], out_shape))]
                use = [(e, n) for e, n in use if e.path not in dropped]
                LOG.warning("tensor %s: vocabulary sizes differ (%s); larger inputs are cut to "
                            "the base's %s rows%s", out_name, sizes, out_shape[0],
                            f"; skipped (smaller than the base): {', '.join(dropped)}"
                            if dropped else "")
            else:
                out_shape = tuple(min(sh[i] for sh in shapes.values()) for i in range(2))
                LOG.warning("tensor %s: vocabulary sizes differ (%s); every input is cut to the "
                            "common %s submatrix", out_name, sizes, list(out_shape))
        params = {}
        for field in MODEL_FIELDS:
            if field not in m.tensor:
                continue
            vals = []
            for e, name in use:
                v = lookup(field, name, t, e.params, slice_params, cfg.params)
                if v is None:
                    v = m.tensor[field]
                    if v is REQUIRED:
                        raise ConfigError(f"tensor {out_name!r}: {m.name} needs {field} for "
                                          f"model {e.path} (no value or filter matches)")
                vals.append(v)
            params[field] = vals
        for i, (e, _) in enumerate(use):
            get = lambda f: params[f][i] if f in params else MODEL_DEFAULTS[f]  # noqa: E731
            check_della(m, get("density"), get("epsilon"),
                        f"tensor {out_name!r}, model {e.path}", ConfigError)
        for g, default in m.glob.items():
            v = lookup(g, out_name, t, slice_params, cfg.params)
            if v is None:
                if default is REQUIRED:
                    raise ConfigError(f"tensor {out_name!r}: {m.name} needs the parameter {g}")
                continue
            params[g] = v
        out_dtype = self.dtype or cfg.out_dtype or cfg.dtype or info.dtype
        return Job(out_name, out_dtype, out_shape,
                   base=(base[0].path, base[1]) if base else None,
                   inputs=tuple((e.path, n) for e, n in use), params=params, permute=permute)


def plan(cfg, files, dtype=None, vocab=None):
    """The list of Jobs. With ``models:``, every tensor of the base (else the first model)
    in its storage order; with ``slices:``, the pre-layer tensors from the first slice's
    sources, the layers slice by slice, then the post-layer tensors from the last slice's."""
    if cfg.slices:
        return _plan_slices(cfg, files, dtype, vocab)
    base, inputs = _roles(cfg, cfg.models)
    ref = files[(base or inputs[0]).path]
    names = ref.keys()
    t_of = _layer_t(names)
    pl = _Planner(cfg, files, dtype, vocab)
    return [pl.job(name, (base, name) if base else None, [(e, name) for e in inputs],
                   t_of(name)) for name in names]


def _plan_slices(cfg, files, dtype, vocab):
    from .config import LAYER_RE

    pl = _Planner(cfg, files, dtype, vocab)
    first = cfg.slices[0]
    ref_entry = next((e for e in first.sources if e.path == cfg.base), first.sources[0])
    ref = files[ref_entry.path]
    names = ref.keys()
    layer_names = [n for n in names if layer_index(n) is not None]
    lo = min((layer_index(n) for n in layer_names), default=0)
    templates = [LAYER_RE.sub(".{}.", n, count=1) for n in layer_names if layer_index(n) == lo]
    others = [n for n in names if layer_index(n) is None]
    pre = [n for n in others if "embed" in n]
    post = [n for n in others if "embed" not in n]

    def whole(name, sl):
        base, inputs = _roles(cfg, sl.sources)
        return pl.job(name, (base, name) if base else None, [(e, name) for e in inputs], 0.0,
                      sl.params)

    jobs = [whole(n, first) for n in pre]
    out_layer = 0
    for sl in cfg.slices:
        base, inputs = _roles(cfg, sl.sources)
        if cfg.method.base != "none" and cfg.base and base not in sl.sources:
            raise ConfigError(f"slices: every slice must list base_model {cfg.base} among its "
                              f"sources for {cfg.method.name}")
        n_layers = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
        for j in range(n_layers):
            t = j / (n_layers - 1) if n_layers > 1 else 1.0
            for tpl in templates:
                src = lambda e: (e, tpl.format(e.layer_range[0] + j))  # noqa: E731
                jobs.append(pl.job(tpl.format(out_layer), src(base) if base else None,
                                   [src(e) for e in inputs], t, sl.params))
            out_layer += 1
    jobs += [whole(n, cfg.slices[-1]) for n in post]
    return jobs


def _view(f, name, shape):
    a = f.get(name)
    if tuple(a.shape) != tuple(shape):  # embedding cut to the top-left submatrix
        a = np.ascontiguousarray(a[tuple(slice(0, s) for s in shape)])
    return a


def _merge_job(job, files, method, seed, threads, vocab=None):
    if job.copy_from:
        return np.asarray(files[job.copy_from[0]].get(job.copy_from[1]))
    if job.permute:
        srcs = ([job.base] if job.base else []) + list(job.inputs)
        rows = vocab.permute(job.name, {p: files[p].get(n) for p, n in srcs})
        base = rows[job.base[0]] if job.base else None
        xs = [rows[p] for p, _ in job.inputs]
    else:
        base = _view(files[job.base[0]], job.base[1], job.out_shape) if job.base else None
        xs = [_view(files[p], n, job.out_shape) for p, n in job.inputs]
    if method.base == "required" and not xs:
        return base.astype(st.numpy_dtype(job.out_dtype))
    try:
        return merge_tensors(method.name, base, xs, out_dtype=st.numpy_dtype(job.out_dtype),
                             seed=seed, tensor_name=job.name, threads=threads, **job.params)
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
    files = {p: st.open(p) for p in cfg.model_paths()}
    entries = cfg.models or [e for sl in cfg.slices for e in sl.sources]
    base_entry, inputs = _roles(cfg, entries)
    base_path = base_entry.path if base_entry else None
    donor = cfg.base or entries[0].path
    vocab = None
    if cfg.tokenizer_source:
        from .vocab import VocabPlan
        vocab = VocabPlan(cfg.tokenizer_source, base_path, list(dict.fromkeys(
            ([base_path] if base_path else []) + [e.path for e in inputs])))
    jobs = plan(cfg, files, dtype, vocab)
    parent = os.path.dirname(out_path)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temps(out_path)
    tmp = tempfile.mkdtemp(prefix=_temp_prefix(out_path) + f"{os.getpid()}-", dir=parent)
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
                        for p, n in set((nxt.base,) + nxt.inputs + (nxt.copy_from,)) - {None}:
                            files[p].prefetch(n)
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
    gen = os.path.join(donor, "generation_config.json")
    if os.path.isfile(gen):
        shutil.copyfile(gen, os.path.join(tmp, "generation_config.json"))
    resolved = dict(cfg.raw)
    if cfg.base:
        resolved["base_model"] = cfg.base
    if "models" in resolved:
        resolved["models"] = [dict(m, model=e.path) for m, e in zip(resolved["models"], cfg.models)]
    if "slices" in resolved:
        resolved["slices"] = [
            dict(raw, sources=[dict(r, model=e.path) for r, e in zip(raw["sources"], sl.sources)])
            for raw, sl in zip(resolved["slices"], cfg.slices)]
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
