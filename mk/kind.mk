# kubetask on kind: real pods and real images, on a machine with Docker.
#   make kind        cluster (kind-config.yaml) → image → chart → examples/task.yaml Succeeded
#   make kind-down   delete the cluster
# Included from the Makefile (`include mk/kind.mk`). Each tool can be
# overridden: `make kind KIND=~/go/bin/kind HELM=~/bin/helm`.

KIND ?= kind
DOCKER ?= docker
HELM ?= helm
KUBECTL ?= kubectl
KIND_CLUSTER ?= kubetask
KIND_IMAGE_REPOSITORY ?= kubetask
KIND_IMAGE_TAG ?= dev
KIND_NAMESPACE ?= kubetask-system
KIND_RELEASE ?= kubetask
KIND_CONTEXT := kind-$(KIND_CLUSTER)
KIND_KUBECTL = $(KUBECTL) --context $(KIND_CONTEXT) --namespace $(KIND_NAMESPACE)

.PHONY: kind kind-down kind-tools

kind-tools:
	@for tool in $(DOCKER) $(KIND) $(HELM) $(KUBECTL); do \
		command -v $$tool >/dev/null 2>&1 || { echo "make kind: $$tool is not installed (needed: docker, kind, helm, kubectl)" >&2; exit 1; }; \
	done
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make kind: no Docker engine answers \`docker info\`" >&2; exit 1; }

## kind: a kind cluster with kubetask installed by the chart, and the example Task run to Succeeded
kind: kind-tools
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
		echo "kind cluster $(KIND_CLUSTER) exists: reusing it"; \
	else \
		$(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 120s; \
	fi
	$(DOCKER) build -t $(KIND_IMAGE_REPOSITORY):$(KIND_IMAGE_TAG) .
	$(KIND) load docker-image $(KIND_IMAGE_REPOSITORY):$(KIND_IMAGE_TAG) --name $(KIND_CLUSTER)
	$(HELM) upgrade --install $(KIND_RELEASE) charts/kubetask \
		--kube-context $(KIND_CONTEXT) --namespace $(KIND_NAMESPACE) --create-namespace \
		--set postgresql.enabled=true \
		--set image.repository=$(KIND_IMAGE_REPOSITORY) \
		--set image.tag=$(KIND_IMAGE_TAG) \
		--set image.pullPolicy=Never \
		--wait --timeout 5m
	@# On a re-run the image was rebuilt under the same tag: restart the operator and workers so they run it.
	$(KIND_KUBECTL) rollout restart deployment -l app.kubernetes.io/instance=$(KIND_RELEASE)
	$(KIND_KUBECTL) rollout status deployment -l app.kubernetes.io/instance=$(KIND_RELEASE) --timeout=180s
	$(KIND_KUBECTL) delete task hello --ignore-not-found --wait=true
	$(KIND_KUBECTL) apply -f examples/task.yaml
	$(KIND_KUBECTL) wait --for=jsonpath='{.status.phase}'=Succeeded task/hello --timeout=180s \
		|| { $(KIND_KUBECTL) get tasks,pods; $(KIND_KUBECTL) logs deployment/$(KIND_RELEASE)-operator --tail=50; exit 1; }
	$(KIND_KUBECTL) get tasks
	@echo "kubetask on kind: ready. kubectl --context $(KIND_CONTEXT) -n $(KIND_NAMESPACE) get tasks -w"

## kind-down: delete the kind cluster
kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)
