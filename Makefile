# Two set-up commands for users: `make demo` and `make test`. Both install everything they need
# (Debian packages included) into .venv on a fresh machine, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := dev,calibrate,train,bench,opcua
STAMP := $(VENV)/.installed-$(EXTRAS)
# libusb: pyrealsense2; mosquitto: the MQTT broker the verdict-publisher tests talk to; postgresql: the server the
# edge-ingest tests start (tests/servers.py).
SYS_PACKAGES := libusb-1.0-0 mosquitto postgresql

.PHONY: demo test bench bench-accuracy lint sysdeps install clean

sysdeps:
	@missing=""; for p in $(SYS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) sysdeps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

demo: install
	$(PY) -m tools.demo

test: install
	$(PY) -m ruff check .
	$(PY) -m mypy edge drivers engines calibration tools
	$(PY) -m pytest -q

bench: install
	$(PY) -m tools.benchmarks

bench-accuracy: install
	$(PY) -m tools.benchmarks.accuracy --suite

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check edge drivers engines calibration tools tests
	$(PY) -m mypy edge drivers engines calibration tools

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
