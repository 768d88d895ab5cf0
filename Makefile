# Two commands do all the set-up (README "Quick start"):
#   make demo   create .venv, install ragqa and its starter models, answer a question about corpora/
#   make test   the same set-up, then the whole test suite (unit + integration)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned for the install only: an unpinned torch pulls a multi-GB CUDA build, and this
# CPU wheel is what ragqa is tested with. A user with a GPU installs their own torch first.
TORCH_PIN ?= torch==2.13.0
# llama-cpp-python is compiled from source. Its default build (-march=native) turns on AMX on CPUs
# that report it (Xeon Sapphire Rapids and later); in VMs whose kernel does not grant AMX tiles the
# first generated token then segfaults. On x86-64 ragqa builds it for AVX2/FMA/F16C instead (any
# x86-64 CPU since 2013), once: the wheel is kept in ~/.cache/ragqa/wheels, keyed by these flags.
LLAMA_CPP_VERSION ?= 0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif
LLAMA_WHEELS := $(HOME)/.cache/ragqa/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)

.PHONY: setup ocr browser demo test unit integration clean

$(BIN)/ragqa: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(BIN)/python -m pip wheel -q --no-cache-dir --no-deps -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	$(BIN)/python -m pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH_PIN)"
	# unstructured[pdf] drags in timm -> torchvision. PyPI's torchvision is built for CUDA torch and
	# breaks `import transformers` next to a CPU torch ("operator torchvision::nms does not exist").
	# ragqa reads the PDF text layer only and never uses it, so it goes.
	$(BIN)/python -m pip uninstall -q -y torchvision || true
	touch $(BIN)/ragqa

setup: $(BIN)/ragqa ocr

# OCR of scanned PDFs and images runs Debian's Tesseract with its Simplified/Traditional Chinese and
# English models (system packages: pip has no Tesseract). Installed here when missing and we may
# use apt; without it ragqa still reads every file that has text, and says what to install for a scan.
OCR_DEBS := tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim tesseract-ocr-chi-tra
ocr:
	@dpkg -s $(OCR_DEBS) >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1 || { \
	  command -v tesseract >/dev/null 2>&1 || echo "note: Tesseract is not installed and apt is not available: scanned PDFs and images cannot be read (install tesseract with chi_sim, chi_tra and eng)"; exit 0; }; \
	dpkg -s $(OCR_DEBS) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	    echo "note: Tesseract is missing and apt is not available to this user: scanned PDFs and images cannot be read (apt install $(OCR_DEBS))"; exit 0; fi; \
	  echo "installing Tesseract OCR with its Chinese and English models (scanned PDFs and images)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(OCR_DEBS) >/dev/null; }

# The web page tests drive a real headless Chromium: Debian's package (Playwright's own browser
# download is not reachable offline). Installed here when missing and we may use apt.
browser:
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && \
	  dpkg -s fonts-noto-cjk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	    echo "chromium or fonts-noto-cjk is missing and apt is not available to this user: the web page tests may skip"; exit 0; fi; \
	  echo "installing chromium and a CJK font (screenshots of the Chinese page) for the web page tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; }

demo: setup
	$(BIN)/ragqa ask corpora/en/heron_festival.md "When is the Zorblat festival held, and what does it celebrate?"

test: setup browser
	$(BIN)/python -m pytest -q

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup browser
	$(BIN)/python -m pytest -q tests/integration

clean:
	rm -rf $(VENV) .pytest_cache
