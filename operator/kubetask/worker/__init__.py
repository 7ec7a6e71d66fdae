"""The worker: claim due tasks of one queue, run their handlers, record every outcome.

Shape of one worker process (``run``):

* A listener connection LISTENs on ``kubetask_queue`` and wakes the claim
  loop when its queue gets work. NOTIFY is only a hint: the claim loop also
  polls every ``poll_interval_seconds``, and claims once after every
  (re)connect of the listener, so a lost notification costs latency, never work.
* The claim loop claims at most as many tasks as it has idle slots, in one
  statement, so one process never takes more than it can run and the rest
  stay for other pods. A slot is idle again as soon as its handler returns:
  the claim does not wait for the result to be written.
* Successes are group-committed. While the worker is busy (its last claim was
  full), the results ride along with its next claim: one statement records a
  batch and claims the next (``db.queue.complete_and_claim``). Otherwise they are
  written at once (``db.queue.complete_many``), and those that arrive while a
  write is in flight go together in the next one. An idle worker pays no extra
  latency; a busy one pays one round trip per batch instead of two per task.
  Each slot still waits for its own result to be recorded, and each row of a
  batch is guarded by the lease as before.
* Each claimed task runs in a slot. Async handlers run on the event loop;
  plain functions run in a thread pool so a blocking handler does not stall
  the loop. Every attempt has a time limit: ``timeoutSeconds``, capped by
  the pool's ``max_timeout_seconds`` (``invoke``). A thread's clock starts
  when the thread starts the handler (``threads``); a thread cannot be
  killed, so a timed-out plain-function handler's thread is abandoned (its
  ``ctx.cancelled`` is set so a cooperative handler can return) and its
  attempt is recorded as ``timeout`` at once. Once the abandoned threads
  reach the concurrency, the worker recycles itself (``recycle``).
* A heartbeat renews the leases of the tasks this process runs every
  ``heartbeat_interval_seconds``, and learns which of them it no longer holds
  (Task deleted, or rescued after this process stalled): those are stopped
  and their outcome is not recorded (someone else already did). It runs on
  a second event loop in a thread of its own, with its own connection
  (``sideloop``, ``heartbeat``), beside the loop watchdog's observer, which
  names an async handler blocking the event loop while it does
  (``watchdog``), and the ``/healthz`` liveness endpoint (``health``).
* Outcomes are recorded through ``db.queue`` with the retry decision from
  ``retry``; every write is guarded by the lease, so a late result after a
  rescue changes nothing.

Graceful stop (the ``stop`` event, set by SIGTERM/SIGINT in ``main``): stop
claiming, let running tasks finish for up to ``shutdown_timeout_seconds``,
then cancel the rest and hand them back to the queue (their attempt is
recorded ``handed_back`` and does not spend the retry budget), then return.
Cancelling the task running ``run`` instead is abrupt: leases then expire and
the operator's rescuer records those attempts as lost.

Database outages: each operation reconnects with exponential backoff; the
listener re-LISTENs after reconnecting. Every write is guarded, so retrying
one whose first try may have committed is harmless. A claim whose commit was
lost with the connection leaves tasks this process does not know about; their
leases are never renewed and the rescuer returns them to the queue.

The package: ``runner`` (the ``Worker``: claim loop, slots, drain),
``invoke`` and ``threads`` (a handler call within its time limit),
``recycle`` (when the process gives way to a fresh one), ``sideloop``,
``heartbeat``, ``watchdog`` and ``health`` (what runs beside the handlers'
loop), ``completions`` (the group commit), ``results`` (what a handler may
return and the worker's own errors), ``process`` (the process: settings,
signals, the event loop, exit statuses). Layering: it uses ``db``, ``handlers``, ``retry``
and ``settings``; never Kubernetes.
"""

from kubetask.worker.process import main, run, run_loop
from kubetask.worker.runner import Worker

__all__ = ["Worker", "main", "run", "run_loop"]
