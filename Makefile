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
# llama.cpp's own OpenAI-compatible server (continuous batching, --parallel N), built from the
# llama.cpp sources inside the same llama-cpp-python sdist, with the same CPU flags: the real
# batching server of the API's tests and bench/bench_serve.py. Built once (~8 min on 2 cores), kept
# in ~/.cache/ragqa/bin like the wheel; no web UI (it would be downloaded), no curl, no TLS.
LLAMA_SERVER := $(HOME)/.cache/ragqa/bin/llama-server-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
LLAMA_SERVER_CMAKE_ARGS := -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
export RAGQA_LLAMA_SERVER := $(LLAMA_SERVER)

.PHONY: setup ocr office browser llama-server demo test unit integration clean

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

setup: $(BIN)/ragqa ocr office

llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): | $(BIN)/ragqa
	@echo "building llama.cpp's llama-server $(LLAMA_CPP_VERSION) (once, kept in $(dir $(LLAMA_SERVER)))"
	rm -rf $(LLAMA_SERVER).build && mkdir -p $(LLAMA_SERVER).build
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(LLAMA_SERVER).build "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	tar xzf $(LLAMA_SERVER).build/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SERVER).build
	cmake -S $(LLAMA_SERVER).build/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp -B $(LLAMA_SERVER).build/out \
	  $(LLAMA_SERVER_CMAKE_ARGS) $(LLAMA_CMAKE_ARGS) > $(LLAMA_SERVER).build/cmake.log
	cmake --build $(LLAMA_SERVER).build/out --target llama-server -j $$(nproc) > $(LLAMA_SERVER).build/build.log
	cp $(LLAMA_SERVER).build/out/bin/llama-server $(LLAMA_SERVER).tmp && mv $(LLAMA_SERVER).tmp $(LLAMA_SERVER)
	rm -rf $(LLAMA_SERVER).build

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

# Word/PowerPoint 97-2003 and WPS Office files (.doc .ppt .wps .dps; .xls/.et only when xlrd cannot
# read one) are converted by LibreOffice. Debian's headless Writer, Calc and Impress, without their
# recommends, are the smallest set that reads all three (73 packages, ~310 MB; libreoffice-core-nogui
# alone has none of the import filters, and Impress is needed beside the Draw it pulls in). Installed
# here when missing and we may use apt; a LibreOffice already installed (the desktop one too) is used.
OFFICE_DEBS := libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui
office:
	@command -v soffice >/dev/null 2>&1 && exit 0; \
	command -v apt-get >/dev/null 2>&1 || { \
	  echo "note: LibreOffice is not installed and apt is not available: .doc, .ppt, .wps and .dps files cannot be read (install LibreOffice)"; exit 0; }; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	  echo "note: LibreOffice is missing and apt is not available to this user: .doc, .ppt, .wps and .dps files cannot be read (apt install $(OFFICE_DEBS))"; exit 0; fi; \
	echo "installing LibreOffice (headless) for .doc, .ppt and WPS Office files"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(OFFICE_DEBS) >/dev/null

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

test: setup browser llama-server
	$(BIN)/python -m pytest -q

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup browser llama-server
	$(BIN)/python -m pytest -q tests/integration

clean:
	rm -rf $(VENV) .pytest_cache
