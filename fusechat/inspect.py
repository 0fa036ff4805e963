"""``fusechat inspect PATH [--json]``: what a checkpoint or a TopK store holds.

For a TopK store (a folder with a fusechat-topk manifest, or one of parts): its kind, model,
K, counts, dtypes and bytes per token, and for an aligned store made by the byte projection
its fidelity figures. For a checkpoint: lists the tensors (name, dtype, shape, parameter count, shard), totals per dtype, the
parameter count, the safetensors metadata and, for a folder with a ``config.json``, the
model configuration. Opening validates every header, so this is also a quick integrity
check of a download.
"""
import json
import os
from collections import Counter

from . import safetensors as st
from .errors import FormatError

CONFIG_KEYS = ("model_type", "architectures", "vocab_size", "hidden_size",
               "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "torch_dtype",
               "tie_word_embeddings")


def read_config(folder):
    """The folder's config.json as a dict, None when absent; FormatError if it is not a
    JSON object."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: not a JSON object")
    return config


def checkpoint_summary(path):
    """A JSON-ready dict describing the checkpoint at ``path`` (a file or a folder)."""
    path = os.fspath(path)
    with st.open(path) as f:
        tensors = []
        for name in f.keys():
            i = f.info(name)
            tensors.append({"name": name, "dtype": i.dtype, "shape": list(i.shape),
                            "numel": i.numel, "nbytes": i.nbytes,
                            "shard": os.path.basename(i.shard), "begin": i.begin,
                            "end": i.end})
        shards = [os.path.basename(s) for s in f.shards]
        metadata = dict(f.metadata)
    per_dtype = Counter()
    for t in tensors:
        per_dtype[t["dtype"]] += t["numel"]
    return {
        "path": path,
        "shards": shards,
        "tensors": tensors,
        "tensor_count": len(tensors),
        "parameters": sum(t["numel"] for t in tensors),
        "bytes": sum(t["nbytes"] for t in tensors),
        "parameters_per_dtype": dict(sorted(per_dtype.items())),
        "metadata": metadata,
        "config": read_config(path) if os.path.isdir(path) else None,
    }


def human_count(n):
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def human_bytes(n):
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def format_table(s):
    lines = [f"{s['path']}: {s['tensor_count']} tensors, {human_count(s['parameters'])} "
             f"parameters ({s['parameters']:,}), {human_bytes(s['bytes'])} in "
             f"{len(s['shards'])} file{'s' if len(s['shards']) != 1 else ''}"]
    for dt, n in s["parameters_per_dtype"].items():
        lines.append(f"  {dt:<8} {n:>16,} parameters")
    if s["metadata"]:
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in s["metadata"].items()]
    if s["config"] is not None:
        lines.append("config.json:")
        lines += [f"  {k}: {s['config'][k]}" for k in CONFIG_KEYS if k in s["config"]]
    sharded = len(s["shards"]) > 1
    rows = [(t["name"], t["dtype"], "[" + ", ".join(map(str, t["shape"])) + "]",
             f"{t['numel']:,}", t["shard"] if sharded else "") for t in s["tensors"]]
    head = ("tensor", "dtype", "shape", "parameters", "shard" if sharded else "")
    widths = [max(len(r[c]) for r in rows + [head]) for c in range(5)]
    fmt = lambda r: "  ".join((r[c].rjust if c == 3 else r[c].ljust)(widths[c])  # noqa: E731
                              for c in range(5)).rstrip()
    lines += ["", fmt(head)] + [fmt(r) for r in rows]
    return "\n".join(lines)


def is_store(path):
    """Whether path is a TopK store folder (or a folder of its parts)."""
    mpath = os.path.join(os.fspath(path), "manifest.json")
    if os.path.isfile(mpath):
        try:
            with open(mpath, encoding="utf-8") as f:
                return json.load(f).get("format") == "fusechat-topk"
        except (OSError, ValueError):
            return False
    return os.path.isdir(path) and any(n.startswith("part-") for n in os.listdir(path))


def store_summary(path):
    """What a TopK store holds (opening it validates every shard)."""
    from .stages.store import open_store

    with open_store(path) as s:
        m = s.manifest
        info = m.get("info", {})
        out = {"path": os.fspath(path), "kind": m["kind"], "model": m["model"], "k": m["k"],
               "n_samples": m["n_samples"], "n_tokens": m["n_tokens"],
               "format": f"{m['version']}.{m.get('minor_version', 0)}", "dtypes": m["dtypes"],
               "bytes_per_token": s.bytes_per_token()}
        for key in ("projection", "method", "map", "fidelity"):
            if info.get(key) is not None:
                out[key] = info[key]
    return out


def format_store(s):
    from .stages.align import format_fidelity

    lines = [f"TopK store {s['path']}: kind {s['kind']}, model {s['model']!r}, format {s['format']}",
             f"  {human_count(s['n_samples'])} samples, {human_count(s['n_tokens'])} tokens, "
             f"K = {s['k']}, {s['bytes_per_token']:.1f} B/token",
             "  dtypes: " + ", ".join(f"{k} {v}" for k, v in s["dtypes"].items())]
    how = [f"{k} {s[k]}" for k in ("projection", "method", "map") if k in s]
    if how:
        lines.append("  aligned by: " + ", ".join(how))
    if "fidelity" in s:
        lines.append("  fidelity: " + format_fidelity(s["fidelity"]))
    return "\n".join(lines)


def inspect_checkpoint(path, as_json=False):
    """The text ``fusechat inspect`` prints: a table, or JSON with ``as_json``."""
    if is_store(path):
        summary = store_summary(path)
        return json.dumps(summary, indent=2) if as_json else format_store(summary)
    summary = checkpoint_summary(path)
    if as_json:
        return json.dumps(summary, indent=2)
    return format_table(summary)
