"""The resumable step runner behind ``fusechat run`` and ``fusechat demo``.

A ``Step`` writes one output folder; its fingerprint is a SHA-256 of its resolved options and
of its inputs' fingerprints. ``run_steps`` skips a step whose folder carries a marker
(``.fusechat-step.json``) with the same fingerprint, reruns one without it (interrupted) or
with another one (made from other inputs), and logs every step to ``run.log.jsonl``.
"""
import hashlib
import json
import logging
import os
import shutil
import time

LOG = logging.getLogger(__name__)
MARKER = ".fusechat-step.json"
RUN_LOG = "run.log.jsonl"


def _hash(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def path_fingerprint(path):
    """A file's SHA-256, or a folder's hash over its files' names and contents (model folders
    are hashed once per run; a Hub id, not a local path, is its own fingerprint)."""
    if not os.path.exists(path):
        return "name:" + str(path)
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f != MARKER)
    for f in files:
        h.update(os.path.relpath(f, path).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_marker(folder):
    return read_marker_file(os.path.join(folder, MARKER))


def read_marker_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_marker(folder, step, fingerprint):
    tmp = os.path.join(folder, MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"step": step, "fingerprint": fingerprint}, f, indent=1)
    os.replace(tmp, os.path.join(folder, MARKER))



class Step:
    """One unit of work: ``fn(out)`` writes the folder ``out``; ``key`` is what it depends on
    (options and the fingerprints of its inputs)."""

    def __init__(self, name, out, key, fn):
        self.name, self.out, self.fn = name, out, fn
        self.fingerprint = _hash({"step": name, **key})


def _log(out, entry):
    with open(os.path.join(out, RUN_LOG), "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_steps(steps, log_dir, say=None):
    """Run the steps not already done (see the module docstring), logging into log_dir."""
    say = say or (lambda msg: LOG.info("%s", msg))
    os.makedirs(log_dir, exist_ok=True)
    for step in steps:
        t0 = time.time()
        marker = read_marker(step.out)
        if marker and marker.get("fingerprint") == step.fingerprint:
            _log(log_dir, {"time": _now(), "step": step.name, "status": "skipped",
                           "seconds": 0.0, "fingerprint": step.fingerprint})
            say(f"{step.name}: up to date, skipped")
            continue
        if os.path.lexists(step.out):
            # interrupted (no marker) or made from other inputs: start it over
            shutil.rmtree(step.out)
        # a stage's own resume state (train's OUT.partial) is kept only for the same inputs
        pending = step.out + ".pending.json"
        if (read_marker_file(pending) or {}).get("fingerprint") != step.fingerprint:
            shutil.rmtree(step.out + ".partial", ignore_errors=True)
        os.makedirs(os.path.dirname(step.out), exist_ok=True)
        with open(pending, "w", encoding="utf-8") as f:
            json.dump({"step": step.name, "fingerprint": step.fingerprint}, f)
        say(f"{step.name}: running")
        _log(log_dir, {"time": _now(), "step": step.name, "status": "started",
                       "fingerprint": step.fingerprint})
        step.fn(step.out)
        write_marker(step.out, step.name, step.fingerprint)
        os.remove(pending)
        dt = time.time() - t0
        _log(log_dir, {"time": _now(), "step": step.name, "status": "ran",
                       "seconds": round(dt, 3), "fingerprint": step.fingerprint})
        say(f"{step.name}: done in {dt:.1f} s")


def read_run_log(out):
    with open(os.path.join(out, RUN_LOG), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
