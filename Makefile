# kubetask — the two commands: `make dev` (run it) and `make test` (test it).
# Everything else here is a step of those two, or a tool for developers.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STATE := .dev

.PHONY: setup binaries cluster cluster-down dev test test-unit crds lint bench bench-quick clean

## setup: the virtualenv with kubetask (editable), the dev tools and the benchmark peers
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,bench]'
	echo "$(CURDIR)/devenv" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/kubetask-devenv.pth"
	touch $@

## binaries: etcd, kube-apiserver, controller-manager, scheduler, kwok (built once, cached), kubectl, helm
binaries: setup
	$(PY) -m kubetask_dev binaries

## cluster: control plane + PostgreSQL in the background; writes .dev/kubeconfig and .dev/env
cluster: binaries
	$(PY) -m kubetask_dev --state-dir $(STATE) up

## cluster-down: stop everything `make cluster` started
cluster-down:
	@if [ -x $(PY) ]; then $(PY) -m kubetask_dev --state-dir $(STATE) down; fi

## dev: the whole system locally (cluster, PostgreSQL, CRDs, operator, worker pool) until Ctrl-C
dev: binaries
	$(PY) -m kubetask_dev --state-dir $(STATE) dev

## test: the whole suite against a real control plane and PostgreSQL
test: binaries node-prepare
	$(VENV)/bin/pytest

## test-unit: the tests that need no server
test-unit: setup
	$(VENV)/bin/pytest tests/unit

## crds: regenerate crds/task.yaml, crds/queue.yaml and crds/taskschedule.yaml from the pydantic models (and the chart's copies)
crds: setup
	$(PY) -m kubetask.crd crds
	cp crds/task.yaml crds/queue.yaml crds/taskschedule.yaml charts/kubetask/files/crds/

## lint: strict typing and import layers
lint: setup
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## bench: every figure, kubetask against its peers in one run (< 15 min on 2 cores); writes bench/results/latest.{json,png}
bench: binaries
	$(PY) -m bench.run

## bench-quick: the same figures with smaller counts (< 2 min)
bench-quick: binaries
	$(PY) -m bench.run --quick

## kind, kind-down: the real thing on kind (needs Docker; see mk/kind.mk)
include mk/kind.mk

## node, node-down: the chart on a real node of this machine (kubelet, containerd, runc; needs root; see mk/node.mk)
include mk/node.mk

## chaos, chaos-quick: the soak (10,000 / 1,000 tasks) under worker kills and restarts of everything
include mk/chaos.mk

clean: cluster-down node-down
	rm -rf $(STATE) $(NODE_STATE) $(VENV)
