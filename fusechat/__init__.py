"""fusechat: knowledge fusion of chat LLMs (FuseChat), with a C core.

Stage 1 (pairwise knowledge fusion): extract each model's top-K next-token distributions,
align tokens and vocabularies to the pivot model, fuse per sequence (MinCE) and fine-tune
the pivot with a sparse fusion loss. Stage 2: merge the resulting models (SCE, TIES, ...).

Submodules: ``fusechat.safetensors`` (checkpoint I/O), ``fusechat.align`` (token and
vocabulary alignment; ``fusechat.Vocab`` reads tokenizers), ``fusechat.loss`` (the fused
sparse fusion loss and top-K extraction on NumPy arrays), ``fusechat.fuse`` (MinCE/AvgCE
fusion), ``fusechat.torch`` (the loss for PyTorch; imports torch, which fusechat otherwise
never needs). ``fusechat.stages`` holds the stage-1 pipeline stages (extract, align,
fuse, train, evaluate; the TopK store is ``fusechat.TopKStore``), ``fusechat.merge`` stage 2,
``fusechat.recipe`` runs both from one YAML file, ``fusechat.demo`` is `fusechat demo`. The C core is ``fusechat._C``; CUDA kernels, when built, are
``fusechat._C_cuda`` (see ``cuda_available()``).
"""
import logging

__version__ = "0.1.0"

from . import errors  # noqa: E402 - __version__ first: submodules read it
from ._backend import backend, cuda_available
from .errors import ConfigError, CudaError, FormatError, SafetensorsError, TokenizerError
from .vocab import Vocab
from .stages.store import TopKStore, TopKStoreWriter, open_store
from . import progress  # noqa: E402,F401 - sets tqdm's auto mode up quietly, before anyone else

logging.getLogger(__name__).addHandler(logging.NullHandler())


def convert(array, dtype, threads=0):
    """Convert a float array (float16, bfloat16, float32, float64) to another float dtype in C,
    multithreaded: round to nearest even, NaN and inf preserved. Returns a new array."""
    import numpy as np

    from . import _C

    return _C.convert(np.asarray(array), dtype, threads)


__all__ = ["__version__", "backend", "convert", "cuda_available", "errors", "ConfigError",
           "CudaError", "FormatError", "SafetensorsError", "TokenizerError", "TopKStore", "TopKStoreWriter", "Vocab",
           "open_store"]
