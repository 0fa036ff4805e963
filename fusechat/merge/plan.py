"""Planning a merge: one Job per output tensor, every input, parameter, dtype and shape
resolved before any math (so errors come before any output, and the output header is fixed).

With ``models:``, every tensor of the base (else the first model) in its storage order; with
``slices:``, the pre-layer tensors from the first slice's sources, the layers slice by slice,
then the post-layer tensors from the last slice's sources (mergekit's planning).
"""
from dataclasses import dataclass

from ..errors import ConfigError
from .config import LAYER_RE, ModelEntry, layer_index, lookup
from .methods import REQUIRED, check_params, kernel_args

EMBED_NAMES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out")
FLOATS = ("F16", "BF16", "F32", "F64")

@dataclass
class Job:
    name: str
    out_dtype: str
    out_shape: tuple
    copy_from: tuple = None        # (model path, tensor): copied unchanged (non-float tensors)
    base: tuple = None             # (model path, tensor name) of the base input
    inputs: tuple = ()             # (model path, tensor name) of the other inputs, in order
    models: list = None            # the kernel's per-model parameters, a dict per input (kernel_args)
    glob: dict = None              # the kernel's global parameters, by name (kernel_args)
    permute: bool = False          # embedding rows re-laid out by token (tokenizer_source)


def is_embed(name, shape):
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


def roles(cfg, entries):
    """(base entry or None, [input entries]) as the method sees them."""
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
        permute = vocab is not None and is_embed(out_name, out_shape) and not all(
            vocab.identity_for(p, sh[0]) for p, sh in shapes.items())
        if permute:
            if len({sh[1] for sh in shapes.values()}) > 1:
                raise ConfigError(f"tensor {out_name!r}: hidden sizes differ between models")
            out_shape = (vocab.rows, out_shape[1])
        elif len(set(shapes.values())) > 1:
            detail = ", ".join(f"{p}: {list(sh)}" for p, sh in shapes.items())
            if is_embed(out_name, out_shape):
                # mergekit 0.1.5 refuses too; cutting rows would change the model's vocabulary
                # without its tokenizer knowing
                raise ConfigError(f"tensor {out_name!r}: vocabulary sizes differ between models "
                                  f"({detail}); set tokenizer_source (base, union or a model "
                                  "path) to match embedding rows by token")
            raise ConfigError(f"tensor {out_name!r}: shapes differ between models ({detail})")
        per = {}
        for field in m.tensor:
            vals = []
            for e, name in use:
                v = lookup(field, name, t, e.params, slice_params, cfg.params)
                if v is None:
                    v = m.tensor[field]
                    if v is REQUIRED:
                        raise ConfigError(f"tensor {out_name!r}: {m.name} needs {field} for "
                                          f"model {e.path} (no value or filter matches)")
                vals.append(v)
            per[field] = vals
        glob = {}
        for g, default in m.glob.items():
            v = lookup(g, out_name, t, slice_params, cfg.params)
            if v is None:
                if default is REQUIRED:
                    raise ConfigError(f"tensor {out_name!r}: {m.name} needs the parameter {g}")
                continue
            glob[g] = v
        models, glob = kernel_args(m, per, len(use), glob)
        bad = check_params(m, models, glob)
        if bad:
            who = f", model {use[bad[0]][0].path}" if bad[0] >= 0 else ""
            raise ConfigError(f"tensor {out_name!r}{who}: {bad[1]}")
        out_dtype = self.dtype or cfg.out_dtype or cfg.dtype or info.dtype
        return Job(out_name, out_dtype, out_shape,
                   base=(base[0].path, base[1]) if base else None,
                   inputs=tuple((e.path, n) for e, n in use), models=models, glob=glob,
                   permute=permute)


def plan(cfg, files, dtype=None, vocab=None):
    """The list of Jobs. With ``models:``, every tensor of the base (else the first model)
    in its storage order; with ``slices:``, the pre-layer tensors from the first slice's
    sources, the layers slice by slice, then the post-layer tensors from the last slice's."""
    if cfg.slices:
        return _plan_slices(cfg, files, dtype, vocab)
    base, inputs = roles(cfg, cfg.models)
    ref = files[(base or inputs[0]).path]
    names = ref.keys()
    t_of = _layer_t(names)
    pl = _Planner(cfg, files, dtype, vocab)
    return [pl.job(name, (base, name) if base else None, [(e, name) for e in inputs],
                   t_of(name)) for name in names]


def _plan_slices(cfg, files, dtype, vocab):
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
        base, inputs = roles(cfg, sl.sources)
        return pl.job(name, (base, name) if base else None, [(e, name) for e in inputs], 0.0,
                      sl.params)

    jobs = [whole(n, first) for n in pre]
    out_layer = 0
    for sl in cfg.slices:
        base, inputs = roles(cfg, sl.sources)
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


