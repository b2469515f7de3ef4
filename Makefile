# twinflag: two commands from a fresh clone (`make demo`, `make test`); the rest for development.
# Every target installs what it needs first; re-runs skip the install unless pyproject.toml or
# requirements.lock changed (the stamp file).

PYTHON ?= $(shell command -v python3.11 || echo python3)
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# Python 3.11 (what CI runs) installs into .venv; 3.12 or 3.13 (`PYTHON=python3.13 make test`) into a
# .venv-3.13 of its own, so the two never share packages.
VENV ?= $(if $(filter-out 3.11,$(PYTHON_VERSION)),.venv-$(PYTHON_VERSION),.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ../shared/data
# Optional: an index for the torch wheel, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu on a
# Linux machine without a GPU (PyPI's Linux wheel is the CUDA build, about 3 GB with its libraries).
TORCH_INDEX ?=

.PHONY: venv demo test model verifier int8 fast bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@case "$(PYTHON_VERSION)" in 3.11|3.12|3.13) ;; *) echo "twinflag needs Python 3.11, 3.12 or 3.13; $(PYTHON) is $(or $(PYTHON_VERSION),not found) (set PYTHON=python3.11)" >&2; exit 1;; esac
	@if [ "$(PYTHON_VERSION)" != 3.11 ] && [ -z "$(TORCH_INDEX)" ]; then echo "note: Python $(PYTHON_VERSION): torch==2.13.0 comes from PyPI, on Linux x86_64 the CUDA build (about 3 GB with its nvidia-* and cuda-* wheels); TORCH_INDEX=URL takes it from another index. CI tests 3.11 only." >&2; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
		-c requirements.lock -e ".[dev]"
	@touch $(STAMP)

demo: venv
	$(BIN)/python -m demo

test: venv
	$(BIN)/python -m pytest tests/unit tests/contract tests/integration

model: venv
	$(BIN)/python -m trainer default --data-dir $(DATA_DIR) --out models/default

# After `make model`: a verifier and a decision calibrated on a simulated repost stream, into models/default.
verifier: venv
	$(BIN)/python -m trainer verifier --model models/default --data-dir $(DATA_DIR)

# After `make model`: its int8 copy for CPUs (ONNX Runtime, ~2x), written only if average precision on the
# recipe's held-out pairs stays within 0.005 of the float32 model (~5 min with the checks).
int8: venv
	$(BIN)/python -m trainer quantize --model models/default --out models/int8 --data-dir $(DATA_DIR)

# After `make model`: a fast static encoder distilled from models/default (numpy at run time, ~12 min),
# its threshold the best-F1 cosine on a generated stream (seed 3: not the demo's 4, not the bench's 11).
fast: venv
	$(BIN)/python -m devkit.posts --n 2000 --seed 3 --out runs/fast-calibration
	$(BIN)/python -m trainer distill --teacher models/default --data-dir $(DATA_DIR) --out models/fast \
		--calibration-posts runs/fast-calibration/posts.jsonl --calibration-truth runs/fast-calibration/truth.jsonl

bench: venv
	$(BIN)/python -m bench

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/mypy --strict devkit/posts

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache demo/out bench/out
