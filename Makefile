# fusechat: `make demo` runs the demo, `make test` runs every test. Both install what they
# need on a fresh Debian machine (apt packages, .venv, pip packages), idempotently.
SHELL := /bin/bash
PY    := .venv/bin/python
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq
FUZZ_SECONDS ?= 60
SAN   := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# cJSON's flags are read when a recipe runs (deferred `=`), i.e. after `deps` has installed
# libcjson-dev: read at startup (`:=`) they were empty on a fresh machine's first run.
CJSON_CFLAGS = $(shell pkg-config --cflags libcjson 2>/dev/null)
CJSON_LIBS   = $(shell pkg-config --libs libcjson 2>/dev/null || echo -lcjson)
CFLAGS_TEST = -std=c11 -g -O1 -Wall -Wextra -Wno-missing-field-initializers -pthread -Icsrc/include $(CJSON_CFLAGS)
LIBS_TEST   = $(CJSON_LIBS) -lm
CORE_SRC := $(wildcard csrc/core/*.c)
C_TESTS  := $(patsubst tests/c/%.c,build/ctest/%,$(wildcard tests/c/test_*.c))
FUZZERS  := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))

.PHONY: all deps sysdeps build wheel test ctest fuzz pytest demo bench clean

all: build

# system packages (checked every run: cheap), then the virtualenv and the Python dependencies
# (redone when pyproject changes)
deps: sysdeps .venv/.deps-stamp
sysdeps:
	@need=; \
	pkg-config --exists libcjson 2>/dev/null || need="$$need libcjson-dev pkg-config"; \
	command -v gcc >/dev/null || need="$$need gcc"; \
	command -v clang >/dev/null || need="$$need clang"; \
	python3 -c 'import ensurepip' 2>/dev/null || need="$$need python3-venv"; \
	python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
	  || need="$$need python3-dev"; \
	[ -z "$$need" ] || { echo "installing:$$need"; $(APT_INSTALL) $$need; }
# numpy first, for its headers (the build runs without isolation); not --upgrade: a numpy that
# the extras' pins accept (mistral-common's < 2.4) stays, where an upgrade would be undone by
# the next step, with a resolver error printed in between
.venv/.deps-stamp: pyproject.toml | sysdeps
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel
	$(PY) -m pip install -q "numpy>=2.0"
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	@touch $@

build: deps
	$(PY) setup.py -q build_ext --inplace

# a binary wheel that installs with pip alone: libcjson bundled and a manylinux tag, by
# auditwheel (into dist/). CUDA kernels as for any build (FUSECHAT_CUDA); the CPU module never
# needs them.
wheel: deps
	rm -rf build/wheel-raw
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w build/wheel-raw .
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m auditwheel repair -w dist build/wheel-raw/fusechat-*.whl

# C core tests under AddressSanitizer + UndefinedBehaviorSanitizer
build/ctest/%: tests/c/%.c $(wildcard tests/c/*.h) $(CORE_SRC) $(wildcard csrc/include/*.h csrc/core/*.h) | deps
	@mkdir -p $(dir $@)
	gcc $(CFLAGS_TEST) $(SAN) -o $@ $< $(CORE_SRC) $(LIBS_TEST)

ctest: $(C_TESTS)
	@set -e; for t in $(C_TESTS); do echo "== $$t"; ASAN_OPTIONS=detect_leaks=1 $$t; done

# libFuzzer targets, each run for FUZZ_SECONDS (make fuzz FUZZ_SECONDS=3600 for a long run;
# FUZZ_SECONDS=0 neither builds nor runs them: `make test FUZZ_SECONDS=0`, the suite without)
build/fuzz/%: tests/fuzz/%.c $(CORE_SRC) $(wildcard csrc/include/*.h csrc/core/*.h) | deps
	@mkdir -p $(dir $@)
	clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Icsrc/include $(CJSON_CFLAGS) -o $@ $< $(CORE_SRC) $(LIBS_TEST) -pthread

fuzz: $(if $(filter 0,$(FUZZ_SECONDS)),,$(FUZZERS))
	@[ "$(FUZZ_SECONDS)" != 0 ] || { echo "== fuzzers skipped (FUZZ_SECONDS=0)"; exit 0; }; \
	set -eo pipefail; for f in $(FUZZERS); do \
	  n=$$(basename $$f); mkdir -p build/fuzz/corpus-$$n; \
	  echo "== $$f for $(FUZZ_SECONDS)s"; \
	  seeds=tests/fuzz/seeds-$$n; [ -d $$seeds ] || seeds=; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/corpus-$$n $$seeds 2>&1 | tail -n 12; \
	done

pytest: build
	$(PY) -m pytest -q tests

test: build ctest fuzz pytest

demo: build
	$(PY) -m fusechat demo --workdir build/demo

bench: build
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build dist fusechat/*.so

# The prepared check for a GPU machine, in one call: build with CUDA, print the versions, run
# the CUDA tests with FUSECHAT_REQUIRE_CUDA=1 and the GPU benchmark (benchmarks/gpu_check.sh;
# uses the Python that has torch, no .venv needed; run benchmarks/gpu_prepare.sh first where
# there is network if the GPU machine has none).
.PHONY: gpu-check
gpu-check:
	bash benchmarks/gpu_check.sh
