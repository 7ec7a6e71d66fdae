"""PostgreSQL: the durable queue and the permanent history, cut by capability.

One module a capability, each with its own ``sql/<name>.sql`` (every
statement under a named, described header, loaded once by ``db.sql``):

``connection``  connecting, waiting for the server at start, one reconnecting
                connection (``Shared``), the NOTIFY channels.
``schema``      migrations (numbered files in ``migrations/``).
``queue``       what a task's life is made of: admit, claim and complete,
                fail, heartbeat, hand back, cancel, retry from the dead letter.
``outbox``      statuses behind their rows, and marking them mirrored.
``upkeep``      the leader's housekeeping: leadership, expired leases (fetch
                and apply; the decision is the operator's), TTL deletions,
                orphans, history retention.
``reads``       counts and rows for the scaler, the metrics and the CLI.
``release``     the one release a database serves (a second one is refused).
``roles``       the worker's and the reader's privileges, granted after migrating.
``queues``      the row mirroring each Queue object (paused, limits, namespaces), read by the claim.
``ticks``       the ticks of TaskSchedules, each claimed once.
``containers``  what only container tasks need: due queues, pod names, exit codes and log tails, adoption.

Each function here is one state change, and nearly every one is a single
statement (data-modifying CTEs), so it is one round trip and, on an autocommit
connection, one transaction. Policy (retry decisions, messages a user reads)
lives with the callers; this package only binds parameters and shapes rows.

Contract with the operator (the states are documented in ``kubetask.states``
and the first migration):

* ``version`` is bumped by every state-changing statement and each such
  statement notifies ``kubetask_status``; the outbox is the rows with
  ``version > mirrored_version``.
* Statements that make work due notify ``kubetask_queue`` with the queue name.
* Attempt accounting: ``attempts`` counts attempts ever started (the latest
  attempt's number); ``attempts - budget_base`` is what the retry budget has
  spent. A retry from dead letter starts a new budget; a handed-back attempt
  (graceful shutdown) does not spend the budget; a lost attempt (expired
  lease) does, so a task that kills its worker cannot loop for ever.

Layering: nothing here imports the operator, the worker or Kubernetes.
"""

from kubetask.db import connection, containers, outbox, queue, queues, reads, release, roles, schema, ticks, upkeep

__all__ = ["connection", "containers", "outbox", "queue", "queues", "reads", "release", "roles", "schema", "ticks", "upkeep"]
