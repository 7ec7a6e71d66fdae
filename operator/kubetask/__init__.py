"""kubetask: a Kubernetes-native task queue backed by PostgreSQL.

For producers: ``kubetask.submit(type, payload, **spec)`` and
``kubetask.wait(ref)``. They are loaded lazily so that a worker, which
imports ``kubetask.worker``, never imports the Kubernetes client.
"""

from typing import Any

__all__ = ["submit", "wait", "TaskFailed", "TaskRef"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kubetask import client

        return getattr(client, name)
    raise AttributeError(f"module 'kubetask' has no attribute {name!r}")
