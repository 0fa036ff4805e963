"""fusechat's exceptions. Each names the file, tensor or argument and the rule broken.

Errors from the C core carry two extra attributes where they apply:
``rule`` (a short machine-readable name such as ``"header_too_large"``) and ``filename``.
"""


class _RuleError(ValueError):
    rule = None
    filename = None


class SafetensorsError(_RuleError):
    """A safetensors file or index breaks a rule of the format (see docs/formats.md)."""


class TokenizerError(_RuleError):
    """A tokenizer file is malformed or of a kind fusechat does not support."""


class FormatError(_RuleError):
    """A fusechat file (TopK store, recipe, merge config) is malformed."""


class ConfigError(FormatError):
    """A merge config or recipe has an unknown key, a missing key or a bad value."""


class CudaError(RuntimeError):
    """A CUDA call failed, or CUDA was asked for and is not available."""
    rule = None
    filename = None


__all__ = ["SafetensorsError", "TokenizerError", "FormatError", "ConfigError", "CudaError"]
