"""The peers kubetask is measured against, run idiomatically with their own workers.

Each module has the same shape as ``bench.kubetask_adapter``: ``NAME``,
``SETTINGS`` (what the figures were measured with, printed in the notes),
``version()``, a ``Client`` (install the schema, enqueue, watch progress) for
the benchmark process, and ``preload()`` / ``serve(dsn, concurrency, probe)``
for the worker processes ``python -m bench.worker`` starts.
"""
