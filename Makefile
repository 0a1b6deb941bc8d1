# Two commands on a fresh machine (Python 3.11):
#   make run    install, build the demo project (sklearn digits, 5% planted label errors), start the app
#   make test   install, then run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo-project

.PHONY: install run demo test test-fast bench-quick browser postgres proxies clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77"  # pyproject's SPDX licence needs 77
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m mlfix.demo --project $(DEMO)

run: demo
	$(VENV)/bin/streamlit run app.py -- --project $(DEMO)

# Chromium for the real-browser test (Debian package; playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else echo "warning: chromium missing and not root; the browser test will be skipped"; fi; }

# PostgreSQL server binaries for the decisions-store tests (tests/pg.py starts a throwaway server).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "warning: could not install postgresql; the PostgreSQL tests will be skipped"; \
	  else echo "warning: postgresql missing and not root; the PostgreSQL tests will be skipped"; fi; }

# Caddy and nginx, to check the reverse-proxy configs in deploy/ (tests/service/test_deploy_*.py).
proxies:
	@command -v caddy >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq caddy nginx-light openssl >/dev/null) \
	      || echo "warning: could not install caddy/nginx; the proxy config checks will be skipped"; \
	  else echo "warning: caddy/nginx missing and not root; the proxy config checks will be skipped"; fi; }

test: install browser postgres proxies
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not browser"

bench-quick: install
	for b in bench/*.py; do n=$$(basename $$b .py); [ "$$n" = "__init__" ] || [ "$$n" = "common" ] || $(PY) -m bench.$$n --quick || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO)
