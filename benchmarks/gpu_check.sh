#!/usr/bin/env bash
# gpu_check.sh - the prepared check for a GPU machine (`make gpu-check`), in one call:
#   1. finds a Python with torch (FUSECHAT_PYTHON, the repo's .venv, python3) and the
#      packages the tests need; installs missing ones from .gpu/ (benchmarks/gpu_prepare.sh
#      fills it on a machine with network), else from PyPI where reachable;
#   2. finds cJSON (system, else the Debian packages in .gpu/) and builds fusechat._C and
#      fusechat._C_cuda for the GPU it finds (FUSECHAT_CUDA=1: a failed CUDA build stops);
#   3. prints the device, driver, CUDA, torch and fusechat versions;
#   4. runs the CUDA tests with FUSECHAT_REQUIRE_CUDA=1 (a skipped CUDA test fails);
#   5. runs the GPU half of benchmarks/bench_loss.py and writes its table (for
#      docs/benchmarks.md) to OUTDIR/gpu_loss.md.
# Usage: benchmarks/gpu_check.sh [OUTDIR]   (default $OUT, else build/gpu-check)
# Writes OUTDIR/gpu_check.log, versions.txt, tests.xml, gpu_loss.md. Exit status: the
# tests' (0 only if every CUDA test ran and passed), else the first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUTDIR=${1:-${OUT:-build/gpu-check}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONUNBUFFERED=1
T0=$SECONDS
step() { echo; echo "== [$((SECONDS - T0)) s] $*"; }
die() { echo "gpu_check: $*"; exit "${2:-2}"; }
SITE=/tmp/fusechat-gpu-site  # packages installed here, never into the system's Python
mkdir -p "$SITE"
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

main() {
step "python"
PY=
for cand in "${FUSECHAT_PYTHON:-}" .venv/bin/python python3 python; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || continue
    if "$cand" -c 'import torch' >/dev/null 2>&1; then PY=$cand; break; fi
    echo "  $cand: no torch"
done
[ -n "$PY" ] || PY=$(command -v python3) || die "no python3"
echo "  using $PY ($("$PY" -V 2>&1))"

# pip install PACKAGE [pip options] from .gpu/ (offline) if a wheel is there, else from PyPI
# (where reachable, two minutes at most)
pip_install() {
    local name=$1
    shift
    if compgen -G ".gpu/${name//-/_}-*.whl" >/dev/null &&
        "$PY" -m pip install -q --no-index --find-links .gpu --target "$SITE" "$@" "$name"; then
        echo "  installed $name from .gpu/"
        return 0
    fi
    timeout 120 "$PY" -m pip install -q --target "$SITE" "$@" "$name" &&
        echo "  installed $name from PyPI"
}

step "python packages"
for mod in numpy ml_dtypes pytest yaml tqdm setuptools torch; do
    if "$PY" -c "import $mod" >/dev/null 2>&1; then
        echo "  $mod $("$PY" -c "import $mod; print(getattr($mod, '__version__', '?'))")"
    else
        pkg=$mod; [ "$mod" = yaml ] && pkg=pyyaml; [ "$mod" = ml_dtypes ] && pkg=ml-dtypes
        echo "  $mod missing: installing $pkg"
        pip_install "$pkg" || echo "  $pkg could not be installed"
    fi
done
"$PY" -c 'import torch' 2>/dev/null || die "torch is needed and could not be installed"
if "$PY" -c 'import liger_kernel' >/dev/null 2>&1; then
    echo "  liger_kernel present"
else
    # --no-deps: it needs torch and Triton, which must be the ones already here
    pip_install liger-kernel --no-deps ||
        echo "  Liger-Kernel not installable: the benchmark says so"
fi

step "cJSON"
if pkg-config --exists libcjson 2>/dev/null || [ -f /usr/include/cjson/cJSON.h ]; then
    echo "  system cJSON"
elif ls .gpu/libcjson*.deb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    for deb in .gpu/libcjson*.deb; do
        if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$deb" /
        else (d=$(mktemp -d) && cd "$d" && ar x "$OLDPWD/$deb" && tar -xf data.tar.* -C /); fi
    done
    ldconfig 2>/dev/null || true
    [ -f /usr/include/cjson/cJSON.h ] || die "unpacking .gpu/libcjson*.deb gave no cJSON.h"
    echo "  cJSON from $(ls .gpu/libcjson*.deb | tr '\n' ' ')"
else
    die "cJSON missing: install libcjson-dev, or run benchmarks/gpu_prepare.sh where there is
    network and carry .gpu (as root here)"
fi

step "build (FUSECHAT_CUDA=1)"
command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || echo "  nvcc not on PATH"
echo "  C compiler: $(${CC:-cc} --version 2>/dev/null | head -1)"
"$PY" - <<'EOF' || die "Python.h is missing for $PY: install its python3-dev package" 3
import os, sysconfig
inc = sysconfig.get_paths()["include"]
print("  Python headers:", inc)
raise SystemExit(0 if os.path.exists(os.path.join(inc, "Python.h")) else 1)
EOF
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
export FUSECHAT_CUDA=1 FUSECHAT_CUDA_ARCH=${FUSECHAT_CUDA_ARCH:-${ARCH:-90}}
echo "  FUSECHAT_CUDA_ARCH=$FUSECHAT_CUDA_ARCH"
rm -f fusechat/_C*.so
"$PY" setup.py -q build_ext --inplace --parallel "$(nproc)" || die "the build failed" 3

step "versions"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
    nvcc --version 2>/dev/null | tail -1
    "$PY" - <<'EOF'
import torch, fusechat
from fusechat import _C_cuda
print("torch", torch.__version__, "CUDA", torch.version.cuda, "devices",
      torch.cuda.device_count(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
rt, drv = _C_cuda.versions()
print(f"fusechat._C_cuda: CUDA runtime {rt // 1000}.{rt % 1000 // 10}, driver supports "
      f"{drv // 1000}.{drv % 1000 // 10}")
print("fusechat.cuda_available:", fusechat.cuda_available(with_reason=True))
EOF
} 2>&1 | tee "$OUTDIR/versions.txt"

step "CUDA tests (FUSECHAT_REQUIRE_CUDA=1: a skipped CUDA test fails)"
FUSECHAT_REQUIRE_CUDA=1 timeout 270 "$PY" -m pytest -q -rfE -p no:cacheprovider \
    --junitxml="$OUTDIR/tests.xml" tests/test_cuda.py tests/test_cuda_loss.py \
    tests/test_torch.py
TESTS=$?

step "benchmark: bench_loss.py --gpu"
timeout 200 "$PY" benchmarks/bench_loss.py --gpu --out "$OUTDIR/gpu_loss.md" \
    || echo "gpu_check: the benchmark failed (status $?)"

step "done: tests exit status $TESTS; results in $OUTDIR"
return $TESTS
}

main 2>&1 | tee "$OUTDIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
