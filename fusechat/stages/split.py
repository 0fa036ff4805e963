"""The held-out split of a chat dataset (the ``split`` step of ``fusechat run``)."""
import json
import logging
import os

from ..errors import ConfigError

LOG = logging.getLogger(__name__)


def split_dataset(path, out, *, eval_fraction, eval_size, seed, skip_bad_records=False,
                  eval_path=None):
    """Write out/train.jsonl and out/eval.jsonl: a seeded random held-out split of the
    dataset's valid records, and out/split.json with the counts. Records are validated here
    (chat.load_conversations), so a bad record's error names its row in the dataset; with
    ``skip_bad_records`` bad rows are left out of both splits and listed in split.json.
    With ``eval_path`` the held-out records are that file's (validated the same way) and
    every valid record of ``path`` trains."""
    import numpy as np

    from .chat import load_conversations, read_records

    def valid(p):
        records, lines = read_records(p, lines=True)
        convs, n_bad = load_conversations(records, skip_bad_records=skip_bad_records, name=p,
                                          lines=lines)
        good = [c.index for c in convs]
        bad = sorted(set(range(len(records))) - set(good))
        if n_bad:
            LOG.warning("%s: skipped %d bad record(s): rows %s", p, n_bad, bad[:20])
        return records, good, bad

    records, good, bad = valid(path)
    if eval_path is not None:
        held_records, held_good, held_bad = valid(eval_path)
        train = [records[i] for i in good]
        held = [held_records[i] for i in held_good]
        if not train or not held:
            raise ConfigError(f"dataset: {path if not train else eval_path}: no valid records")
    else:
        n_eval = int(eval_size) if eval_size is not None else int(round(len(good) * eval_fraction))
        if not 0 <= n_eval < len(good):
            raise ConfigError(f"dataset: the held-out split ({n_eval} rows) must leave training "
                              f"rows out of {len(good)} valid records")
        order = np.random.default_rng(seed).permutation(len(good))
        chosen = {good[i] for i in order[:n_eval].tolist()}
        train = [records[i] for i in good if i not in chosen]
        held = [records[i] for i in good if i in chosen]
        held_bad = []
    os.makedirs(out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            for rec in rows:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(os.path.join(out, "split.json"), "w", encoding="utf-8") as f:
        json.dump({"records": len(records), "train": len(train), "eval": len(held),
                   "eval_path": eval_path, "skipped_bad_records": bad,
                   "skipped_bad_eval_records": held_bad}, f, indent=1)
