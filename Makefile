# Two commands do everything on a fresh Debian 12 machine: `make run` and `make test`.
# Both build .venv from the pinned requirements.txt; `make test` also installs the
# Debian packages that the tests talk to as real peers.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBS   := swaks fetchmail postfix isync getmail6 offlineimap3 neomutt tmux
# Heap budgets are judged on a 32-bit build (see docs/heap.md): `make heap MICROPYTHON32=PATH`.
MICROPYTHON32 ?=
PYTEST_ARGS ?=
ONCE ?=

.PHONY: run test test-long bench heap debs venv clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "installing the pinned packages into $(VENV) (pip shows each download, so a slow network is not a hang)"
	$(BIN)/pip install --disable-pip-version-check --progress-bar on -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# Installs only what is missing, so a machine that has them is left alone
# (asked of dpkg by package name: isync's command is mbsync, getmail6's getmail).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@# Tests and the bench run Postfix's tools and private instances only, never the system daemon.
	@postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1 || true

run: $(STAMP)
	$(BIN)/odmrgw demo $(if $(ONCE),--once,)

# tests/budget is the heap budget suite: `make heap`.
test: $(STAMP) debs
	$(BIN)/pytest -n 2 --ignore=tests/budget $(PYTEST_ARGS)

# Suites too slow for every CI run (long soak, many more power cuts).
test-long: $(STAMP) debs
	ODMRGW_LONG=1 $(BIN)/pytest -n 2 --ignore=tests/budget $(PYTEST_ARGS)

# The heap budget suite on a 32-bit micropython, the way the ESP32 counts.
heap: $(STAMP) debs
	@test -n "$(MICROPYTHON32)" || { echo "make heap: say which binary, MICROPYTHON32=PATH (a 32-bit micropython)"; exit 2; }
	@test -x "$(MICROPYTHON32)" || { echo "make heap: $(MICROPYTHON32) is not an executable file"; exit 2; }
	ODMRGW_MICROPYTHON=$(abspath $(MICROPYTHON32)) $(BIN)/pytest -n 2 tests/budget tests/host/test_hygiene.py tests/host/test_rom.py $(PYTEST_ARGS)

bench: $(STAMP) debs
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) build .pytest_cache
