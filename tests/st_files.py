"""Hand-made safetensors file images for the tests (the published layout, built by hand so
they do not depend on any writer): 8-byte little-endian header length, header, data."""
import json
import struct


def image(header, data=b"", length=None):
    """A file image; ``header`` is a str/bytes of JSON or a dict (dumped compactly)."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode()
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def write(path, header, data=b"", length=None):
    with open(path, "wb") as f:
        f.write(image(header, data, length))
    return str(path)
