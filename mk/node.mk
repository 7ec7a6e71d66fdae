# kubetask on a real node of this machine: no Docker, no registry.
#   make node        control plane + PostgreSQL + a real node (containerd, runc, kubelet,
#                    kube-proxy, CoreDNS) + images built here + the chart; prints
#                    `kubetask node: ready`, then leaves it all running in the background
#   make node-down   stop all of it and undo its changes to the host
# Needs root, and Debian's container packages (apt-get install $(NODE_APT)).
# Included from the Makefile (`include mk/node.mk`).

NODE_STATE := .node
NODE_APT := containerd runc containernetworking-plugins iptables iproute2 socat buildah mmdebstrap conntrack

.PHONY: node node-down node-prepare

## node-prepare: the kubelet, kube-proxy, CoreDNS and the images, built once and cached (a no-op saying
## why where this machine cannot run a node); `make test` runs it so tests/node never builds under a timeout
node-prepare: binaries
	$(PY) -m kubetask_dev node-prepare

node: binaries
	$(PY) -m kubetask_dev --state-dir $(NODE_STATE) node

node-down:
	@if [ -x $(PY) ]; then $(PY) -m kubetask_dev --state-dir $(NODE_STATE) node-down; fi
