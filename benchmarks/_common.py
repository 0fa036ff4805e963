"""Shared by the benchmark scripts: what machine ran them, and writing a script's section of
docs/benchmarks.md (each script owns one "## ..." section and replaces only that)."""
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


def write_section(text, path=DOCS):
    """Put `text` (starting with its '## heading' line) in place of the section with the same
    heading, or append it; other sections are kept. Written atomically."""
    heading = text.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section must start with a '## ' heading, got {heading!r}")
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    start = old.find(heading + "\n")
    block = text.rstrip("\n") + "\n"
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + block
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + block + ("\n" + old[end + 1:] if end >= 0 else "")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(path + ".tmp", path)
