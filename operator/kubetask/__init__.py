"""kubetask: a Kubernetes-native task queue backed by PostgreSQL."""
