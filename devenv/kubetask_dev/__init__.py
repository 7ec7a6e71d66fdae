"""Development and test infrastructure: never imported by the shipped package.

A local Kubernetes control plane (etcd, kube-apiserver, controller-manager,
scheduler, kwok), a local PostgreSQL server and the harness that runs a real
process for every worker pod. ``make cluster``, ``make dev`` and the tests
share it.
"""
