# dclabel: `make run` opens the app on the demo project, `make test` runs the whole suite.
# Both set up what they need on a fresh Debian machine (a .venv here, Xvfb/Mesa for the GUI).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
APT_PKGS := xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
            libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
            libxcb-xinerama0 libxcb-xkb1 libdbus-1-3 libfontconfig1 libglib2.0-0

.PHONY: setup system run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch first (a plain `torch` requirement would pull a multi-GB CUDA build).
	$(PIP) install -q "$(TORCH)" || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install -q -e ".[gui,test]"
	touch $(STAMP)

setup: $(STAMP)

# Xvfb and Mesa for napari, installed only when missing (needs root or sudo).
system:
	@if ! command -v xvfb-run >/dev/null 2>&1 || [ ! -e /usr/lib/x86_64-linux-gnu/libEGL.so.1 -a ! -e /usr/lib/aarch64-linux-gnu/libEGL.so.1 ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS); \
	fi

run: setup system
	@if [ -n "$$DISPLAY" ]; then $(VENV)/bin/dclabel app; else xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/dclabel app; fi

test: setup system
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check model loop labeler tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
