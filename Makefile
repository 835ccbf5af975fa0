# The README's two commands: `make demo` and `make test`.
# Both create .venv, install distbuild into it, and install the Debian
# packages it needs (when run as root; otherwise they say what to install).

VENV ?= .venv
PY := $(VENV)/bin/python
DISTBUILD := $(VENV)/bin/distbuild
PYTEST_ARGS ?=

.PHONY: demo test lint host-packages venv

# The main job: a local network (trove, controller, 2 workers) builds the example system.
demo: venv
	$(DISTBUILD) up --state-dir state --demo

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

venv: host-packages $(VENV)/.stamp-install

$(VENV)/.stamp-install: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# Each tool distbuild runs, and the Debian package that has it.
host-packages:
	@missing=""; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v make >/dev/null || missing="$$missing make"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v ssh >/dev/null || missing="$$missing openssh-client"; \
	command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null || missing="$$missing e2fsprogs"; \
	command -v fakeroot >/dev/null || missing="$$missing fakeroot"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	command -v dot >/dev/null || missing="$$missing graphviz"; \
	pkg-config --exists libvirt 2>/dev/null || missing="$$missing libvirt-dev"; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "distbuild needs these Debian packages; run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi
