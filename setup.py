"""Build fusechat's C extensions.

fusechat._C       C11 core + CPython/NumPy bindings, linked to cJSON (libcjson-dev, CJSON_PREFIX).
fusechat._C_cuda  CUDA kernels, built only when nvcc is found. It links cudart statically,
                  so it needs only the NVIDIA driver at run time; fusechat._C never links CUDA.

Environment:
  FUSECHAT_CUDA=auto|0|1   auto (default): build _C_cuda if nvcc works, else say why and skip;
                           0: never; 1: a missing nvcc or a failed compile is an error.
  FUSECHAT_CUDA_ARCH       compute capabilities, e.g. "80;90" (default "75;80;90"); PTX for the
                           highest is embedded too, so newer GPUs JIT-compile it.
  FUSECHAT_CUDA_HOME       the CUDA toolkit to build with (its bin/nvcc and libcudart_static.a),
                           before CUDA_HOME, CUDA_PATH, PATH and /usr/local/cuda. A CUDA 13
                           build needs NVIDIA driver >= 580 at run time; for older drivers
                           (>= 525) build with a CUDA 12.x toolkit:
                           FUSECHAT_CUDA_HOME=/usr/local/cuda-12.8 (pip's nvidia-cuda-nvcc-cu12
                           ships ptxas but no nvcc, so it cannot be used for this).
  CUDA_HOME / CUDA_PATH    where to look for bin/nvcc before PATH and /usr/local/cuda.
  FUSECHAT_DEBUG=1         -O0 -g instead of -O3.
  CJSON_PREFIX=DIR         where cJSON is installed (DIR/include/cjson/cJSON.h and
                           DIR/lib/libcjson.so), e.g. a local build (cmake
                           -DCMAKE_INSTALL_PREFIX=DIR) or a conda env; the module then finds
                           libcjson there at run time (rpath). Without it: pkg-config, then
                           /usr, /usr/local and $CONDA_PREFIX are searched.
"""
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


CJSON_MISSING = """\
fusechat: cannot build: the cJSON library (cJSON.h, libcjson.so) was not found{why}.
Install it, then build again; one of:
  apt-get install libcjson-dev            (Debian/Ubuntu, as root)
  conda install -c conda-forge cjson      (in the active conda env, no root)
  CJSON_PREFIX=DIR pip install ...        (DIR/include/cjson/cJSON.h, DIR/lib/libcjson.so: e.g. a
                                           cJSON build, cmake -DCMAKE_INSTALL_PREFIX=DIR)
Or install a binary wheel of fusechat, which bundles libcjson."""


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "libcjson"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.split()


def cjson_in_prefix(prefix):
    """(include dirs, library dir) of a cJSON installed under prefix, or None."""
    inc = os.path.join(prefix, "include", "cjson")
    if not os.path.exists(os.path.join(inc, "cJSON.h")):
        return None
    for sub in ("lib", "lib64", os.path.join("lib", "x86_64-linux-gnu")):
        libdir = os.path.join(prefix, sub)
        if os.path.exists(os.path.join(libdir, "libcjson.so")):
            return [inc], libdir
    return None


def cjson_flags():
    """(include dirs, library names, library dirs, run-time library dirs) for cJSON."""
    prefix = os.environ.get("CJSON_PREFIX")
    if prefix:
        found = cjson_in_prefix(prefix)
        if found is None:
            sys.exit(CJSON_MISSING.format(
                why=f" under CJSON_PREFIX={prefix} (no include/cjson/cJSON.h, lib/libcjson.so)"))
        inc, libdir = found
        return inc, ["cjson"], [libdir], [libdir]
    cflags, libs = pkg_config("--cflags"), pkg_config("--libs")
    if cflags is not None and libs is not None:
        inc = [f[2:] for f in cflags if f.startswith("-I")]
        libnames = [f[2:] for f in libs if f.startswith("-l")]
        libdirs = [f[2:] for f in libs if f.startswith("-L")]
        return inc, libnames, libdirs, []
    # pkg-config missing or not knowing libcjson: the usual prefixes
    for prefix in ("/usr", "/usr/local", os.environ.get("CONDA_PREFIX")):
        found = prefix and cjson_in_prefix(prefix)
        if found:
            inc, libdir = found
            system = prefix in ("/usr", "/usr/local")
            return inc, ["cjson"], [] if system else [libdir], [] if system else [libdir]
    sys.exit(CJSON_MISSING.format(why=" (pkg-config does not know libcjson; searched /usr, "
                                      "/usr/local and $CONDA_PREFIX)"))


def find_nvcc():
    chosen = os.environ.get("FUSECHAT_CUDA_HOME")
    if chosen:  # asked for by name: no fallback to another toolkit
        nvcc = os.path.join(chosen, "bin", "nvcc")
        if not os.path.exists(nvcc):
            raise RuntimeError(f"FUSECHAT_CUDA_HOME={chosen}: no bin/nvcc there")
        return nvcc
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def find_cudart(nvcc):
    """The folder holding libcudart_static.a for this nvcc (layouts differ by installer)."""
    roots = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    if not os.environ.get("FUSECHAT_CUDA_HOME"):  # else only the chosen toolkit's own
        roots += [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda",
                  *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in filter(None, roots):
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
            if os.path.exists(os.path.join(root, sub, "libcudart_static.a")):
                return os.path.join(root, sub)
    return None


def rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


DEBUG = os.environ.get("FUSECHAT_DEBUG") == "1"
C_FLAGS = ["-std=c11", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra",
           "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
C_FLAGS += ["-O0", "-g"] if DEBUG else ["-O3"]
MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_23_API_VERSION"),
          ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")]
CORE = rel(glob.glob(os.path.join(HERE, "csrc", "core", "*.c")))
PY_ALL = rel(glob.glob(os.path.join(HERE, "csrc", "py", "*.c")))
PY_CUDA = [p for p in PY_ALL if os.path.basename(p).startswith("cuda_")]
PY_CPU = [p for p in PY_ALL if p not in PY_CUDA]
PY_SHARED = [p for p in PY_CPU
             if os.path.basename(p) in ("py_errors.c", "py_dtype.c", "py_dlpack.c")]
CU = rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
HEADERS = rel(glob.glob(os.path.join(HERE, "csrc", "**", "*.h"), recursive=True)
              + glob.glob(os.path.join(HERE, "csrc", "**", "*.cuh"), recursive=True))


class BuildExt(build_ext):
    """Adds NumPy's headers, and compiles the .cu files with nvcc for fusechat._C_cuda."""

    def build_extensions(self):
        import numpy

        for ext in self.extensions:
            ext.include_dirs.insert(0, numpy.get_include())
        cuda_ext = next((e for e in self.extensions if e.name == "fusechat._C_cuda"), None)
        if cuda_ext is not None and not self._prepare_cuda(cuda_ext):
            self.extensions.remove(cuda_ext)
        super().build_extensions()

    def _prepare_cuda(self, ext):
        mode = os.environ.get("FUSECHAT_CUDA", "auto").lower()
        if mode in ("0", "off", "no", "false"):
            return False
        try:
            nvcc = find_nvcc()
            if nvcc is None:
                raise RuntimeError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
            libdir = find_cudart(nvcc)
            if libdir is None:
                raise RuntimeError("libcudart_static.a not found next to " + nvcc)
            ext.extra_objects += self._nvcc_compile(nvcc)
            ext.library_dirs.append(libdir)
            return True
        except Exception as exc:  # noqa: BLE001 - reported, and fatal only when asked for
            if mode in ("1", "on", "yes", "true"):
                raise SystemExit(f"fusechat: FUSECHAT_CUDA=1 but the CUDA build failed: {exc}")
            print(f"fusechat: building without CUDA kernels: {exc}", file=sys.stderr)
            return False

    def _nvcc_compile(self, nvcc):
        archs = [a.strip().replace(".", "") for a in
                 os.environ.get("FUSECHAT_CUDA_ARCH", "75;80;90").replace(",", ";").split(";")
                 if a.strip()]
        gencode = []
        for a in archs:
            gencode += ["--generate-code", f"arch=compute_{a},code=sm_{a}"]
        top = max(archs, key=int)
        gencode += ["--generate-code", f"arch=compute_{top},code=compute_{top}"]
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)
        objects, commands = [], []
        for src in CU:
            obj = os.path.join(out_dir, os.path.basename(src) + ".o")
            objects.append(obj)
            deps = [src] + HEADERS
            if not self.force and os.path.exists(obj) and all(
                    os.path.getmtime(obj) >= os.path.getmtime(d) for d in deps):
                continue
            cmd = [nvcc, "-c", src, "-o", obj, "-std=c++17", "-Xcompiler", "-fPIC",
                   "-Xcompiler", "-fvisibility=hidden", "-Icsrc/include",
                   "-O0" if DEBUG else "-O3", *gencode]
            if os.environ.get("CC"):
                cmd += ["-ccbin", os.environ["CC"]]
            commands.append(cmd)
        # the .cu files are independent: compile them side by side
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for cmd in commands:
                print(" ".join(cmd), file=sys.stderr)
            list(pool.map(lambda c: subprocess.run(c, check=True, cwd=HERE), commands))
        return objects


cjson_inc, cjson_libs, cjson_dirs, cjson_rpath = cjson_flags()
common = dict(include_dirs=["csrc/include", *cjson_inc], libraries=[*cjson_libs, "m"],
              library_dirs=cjson_dirs, runtime_library_dirs=cjson_rpath, define_macros=MACROS,
              extra_compile_args=C_FLAGS, extra_link_args=["-pthread"], depends=HEADERS)
extensions = [
    Extension("fusechat._C", sources=CORE + PY_CPU, **common),
    Extension("fusechat._C_cuda", sources=CORE + PY_CUDA + PY_SHARED,
              **{**common, "libraries": [*cjson_libs, "m", "cudart_static", "dl", "rt",
                                         "stdc++"],
                 "library_dirs": list(cjson_dirs)}),
]

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
