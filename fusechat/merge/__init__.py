"""Stage 2 of FuseChat: merging checkpoints in parameter space, with mergekit's methods and
YAML configs (see docs/merging.md).

``merge_tensors(method, base, tensors, **params)`` merges NumPy arrays; ``run(config,
out_path, **options)`` merges whole Hugging Face checkpoints, streaming tensor by tensor.
"""
from .methods import METHODS
from .tensors import merge_tensors

__all__ = ["METHODS", "merge_tensors", "run"]


def run(config, out_path, **options):
    """Merge the checkpoints a mergekit-style config names into the folder ``out_path``.
    ``config`` is a path, a YAML string or a dict. Options: overwrite, out_shard_size,
    threads, seed, dtype, quiet. See fusechat.merge.engine.run."""
    from .engine import run as _run

    return _run(config, out_path, **options)
