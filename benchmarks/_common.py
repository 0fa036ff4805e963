"""Shared by the benchmark scripts: what machine ran them, writing a script's section of
docs/benchmarks.md (each script owns one "## ..." section and replaces only that), and the
long chat records the pipeline benchmarks time."""
import os
import platform
import subprocess

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                    "benchmarks.md")


def machine():
    """'AMD EPYC ..., 2 cores, 24 GiB RAM, Linux 6.x' from lscpu and sysconf."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, {platform.system()} {platform.release()}"


def write_section(text, path=DOCS, parent=None):
    """Put `text` (starting with its '## heading' line, or '### heading' with `parent` the
    '## heading' it belongs under) in place of the (sub)section with the same heading, or
    append it (to the end of `parent`, created if missing); everything else is kept.
    Written atomically."""
    heading = text.split("\n", 1)[0]
    level = "### " if parent else "## "
    if not heading.startswith(level):
        raise ValueError(f"a section must start with a {level!r} heading, got {heading!r}")
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    block = text.rstrip("\n") + "\n"

    def end_of(start, stops):  # first following heading of the given levels, or the end
        found = [i for i in (old.find(s, start + 1) for s in stops) if i >= 0]
        return min(found) + 1 if found else len(old)

    start = old.find("\n" + heading + "\n")
    if start >= 0:
        start += 1
        end = end_of(start, ("\n## ", "\n### ") if parent else ("\n## ",))
        new = old[:start] + block + ("\n" + old[end:] if end < len(old) else "")
    elif parent and "\n" + parent + "\n" in old:
        end = end_of(old.find("\n" + parent + "\n") + 1, ("\n## ",))
        new = (old[:end].rstrip("\n") + "\n\n" + block
               + ("\n" + old[end:] if end < len(old) else ""))
    else:
        head = f"{parent}\n\n" if parent else ""
        new = old.rstrip("\n") + "\n\n" + head + block
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(path + ".tmp", path)


def long_records(n, seed):
    """Demo records with several turns each, so that samples have realistic lengths."""
    from fusechat.demo.data import make_dataset

    base = make_dataset(n * 8, seed=seed)
    out = []
    for i in range(n):
        msgs = []
        for rec in base[i * 8:(i + 1) * 8]:
            msgs += rec["messages"]
        out.append({"messages": msgs})
    return out
