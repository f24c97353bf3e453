# The two commands a new user needs: `make demo` and `make test`. Everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Editable installs read gitopsd from this tree, so tests and the demo run the code being edited (a plain .pth
# path entry: pyproject.toml's package-dir keeps setuptools from installing an import hook instead). Where
# PYTHONDONTWRITEBYTECODE is set (many containers and CI runners) nothing would write the tree's bytecode and
# every command would compile what it imports (about 20 ms a start): compile it at install and before `bench`;
# not the demo repository's template (cli/demo), which is copied, never imported.
BYTECODE := $(BIN)/python -m compileall -q -x '/cli/demo/' gitopsd backends/nvidia/gitopsd_nvidia backends/slurm/gitopsd_slurm
DEMO_DIR ?= demo
export GITOPSD_STATE_DIR ?= $(CURDIR)/$(DEMO_DIR)/state

.PHONY: install demo test lint bench mutation clean install-service install-user uninstall-user

$(STAMP): pyproject.toml
	tools/ensure-debs git=git
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint]' -e backends/nvidia -e backends/slurm
	$(BYTECODE)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/gitopsd init $(DEMO_DIR)/repo
	$(BIN)/gitopsd validate $(DEMO_DIR)/repo
	$(BIN)/gitopsd plan --repo $(DEMO_DIR)/repo
	$(BIN)/gitopsd reconcile --repo $(DEMO_DIR)/repo --wait
	$(BIN)/gitopsd status

test: $(STAMP)
	tools/ensure-debs git=git sqlite3=sqlite3 systemd-analyze=systemd sshd=openssh-server ssh-keygen=openssh-client curl=curl \
		chromium=chromium chromedriver=chromium-driver
	# chromium and its driver: the dashboard's browser tests (tests/browser, Selenium, headless).
	# Real servers, started once and stopped whatever pytest's result: a multi-node Slurm for tests/slurm (two
	# nodes, each in its own namespaces; root; see tools/slurm/up.sh and docs/cluster.md) and SeaweedFS for the
	# S3 store (tools/s3/up.sh; `weed` comes from the [test] extra).
	if tools/slurm/up.sh >/dev/null; then set -a && . $${GITOPSD_SLURM_DIR:-/tmp/gitopsd-slurm}/env.sh && set +a; fi; \
	if GITOPSD_WEED=$(CURDIR)/$(BIN)/weed tools/s3/up.sh >/dev/null; then set -a && . $${GITOPSD_S3_DIR:-/tmp/gitopsd-s3}/env.sh && set +a; fi; \
	tools/run-tests $(BIN)/pytest; rc=$$?; tools/s3/down.sh --purge; tools/slurm/down.sh; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check gitopsd tests bench backends
	$(BIN)/ruff format --check gitopsd tests bench backends
	$(BIN)/mypy
	$(BIN)/lint-imports

# Mutation testing of the pure core (docs/mutation-testing.md): mutmut mutates the modules named in pyproject's
# [tool.mutmut] and runs only their tests; tools/mutation-score fails below 97% of behaviour-changing mutants
# killed. About 10 minutes on 2 cores, so it is not part of `make test`. MUTATION_JOBS: parallel mutants.
MUTATION_JOBS ?= 2
MUTATION_STAMP := $(VENV)/.installed-mutation
$(MUTATION_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[mutation]'
	touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(MUTATION_JOBS)
	$(BIN)/python tools/mutation-score

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/artifacts.py
	$(BIN)/python bench/daemon.py
	$(BIN)/python bench/supervisor.py
	$(BIN)/python bench/slurm.py
	$(BIN)/python bench/ui.py
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/listings.py
	$(BYTECODE)
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/specload.py
	$(BIN)/python bench/declared.py
	$(BIN)/python bench/refusal.py

# Install gitopsd system-wide as a systemd service (root): a venv in $(PREFIX), the unit, its user and dirs.
PREFIX ?= /opt/gitopsd
install-service:
	$(PY) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q . $(patsubst %/pyproject.toml,./%,$(wildcard backends/*/pyproject.toml))
	ln -sf $(PREFIX)/bin/gitopsd /usr/local/bin/gitopsd
	install -D -m 0644 systemd/gitopsd.service /etc/systemd/system/gitopsd.service
	install -D -m 0644 systemd/gitopsd.sysusers /usr/lib/sysusers.d/gitopsd.conf
	install -D -m 0644 systemd/gitopsd.tmpfiles /usr/lib/tmpfiles.d/gitopsd.conf
	systemd-sysusers /usr/lib/sysusers.d/gitopsd.conf
	systemd-tmpfiles --create /usr/lib/tmpfiles.d/gitopsd.conf
	test -e /etc/gitopsd/gitopsd.toml || install -m 0640 -g gitopsd config/gitopsd.example.toml /etc/gitopsd/gitopsd.toml
	systemctl daemon-reload
	@echo "edit /etc/gitopsd/gitopsd.toml, then: systemctl enable --now gitopsd"

# Install gitopsd for yourself, without root: a venv under ~/.local/share/gitopsd, ~/.config/gitopsd/config.toml
# (only if absent), state in ~/.local/state/gitopsd and a `systemctl --user` unit (tools/install-user says more).
# PY: the Python for the venv; PIP_FLAGS: extra pip flags; USER_SANDBOX=auto|yes|no: the unit's namespace sandbox.
install-user:
	PY=$(PY) tools/install-user install

# Remove the venv and the unit; your configuration and state stay.
uninstall-user:
	tools/install-user uninstall

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info .mypy_cache .ruff_cache .pytest_cache mutants
