"""Progress bars: tqdm on stderr, off when FUSECHAT_DISABLE_PROGRESS_BARS is set (to anything
but 0/false), when ``disable=True`` is passed (the CLI's --quiet), or when stderr is no TTY."""
import os

import warnings

try:
    # tqdm's auto mode: widgets in Jupyter, text elsewhere. Where ipywidgets is missing it
    # falls back to text bars, but warns "IProgress not found" first: the fallback is fine,
    # the warning is noise (it is emitted once, at this import, for every later user too)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        from tqdm.auto import tqdm as _tqdm
except ImportError:  # tqdm is a dependency, but keep the core importable without it
    _tqdm = None


def bars_disabled():
    v = os.environ.get("FUSECHAT_DISABLE_PROGRESS_BARS", "")
    return v.strip().lower() not in ("", "0", "false", "no")


class _Silent:
    """The subset of tqdm's interface fusechat uses, doing nothing."""

    def __init__(self, iterable=None, **kwargs):
        self.iterable = iterable
        self.n = 0

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, *a, **k):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tqdm(iterable=None, disable=None, **kwargs):
    """A tqdm bar, or a silent stand-in when bars are turned off."""
    if _tqdm is None or disable is True or bars_disabled():
        return _Silent(iterable, **kwargs)
    return _tqdm(iterable, disable=disable, **kwargs)


def disable_all_bars():
    """--quiet: fusechat's bars and those of transformers / huggingface_hub / datasets."""
    import sys

    os.environ["FUSECHAT_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by those libraries when imported
    if "huggingface_hub" in sys.modules:  # already imported: tell them now
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
