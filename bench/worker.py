"""A benchmark worker process: ``python -m bench.worker SYSTEM DSN CONCURRENCY``.

Runs the real worker of SYSTEM (kubetask, pgqueuer, procrastinate, or the
1 s polling loop) with two handlers that measure without working:

* ``noop`` counts, and remembers when the first one started and the last one
  ended (wall clock, comparable across processes on one machine);
* ``stamp`` prints ``STAMP <id> <time>`` the moment it starts, for pickup
  latency (the parent noted the time just before it enqueued ``<id>``).

On SIGTERM the process prints ``SUMMARY {"first": …, "last": …, "count": …}``
and exits at once: by then the parent has seen the queue empty, so nothing is
left running and a graceful shutdown would only add noise.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import time

SYSTEMS = {
    "kubetask": "bench.kubetask_adapter",
    "pgqueuer": "bench.peers.pgqueuer_peer",
    "procrastinate": "bench.peers.procrastinate_peer",
    "polling-1s": "bench.peers.polling_peer",
}


class Probe:
    def __init__(self) -> None:
        self.cpu_at_start = 0.0
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0

    def hit(self) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    def stamp(self, ident: object) -> None:
        sys.stdout.write(f"STAMP {ident} {time.time():.6f}\n")
        sys.stdout.flush()

    def summary(self) -> str:
        times = os.times()
        return "SUMMARY " + json.dumps({"first": self.first, "last": self.last, "count": self.count,
                                        "cpu_seconds": times.user + times.system - self.cpu_at_start})


def main() -> None:
    system, dsn, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module = importlib.import_module(SYSTEMS[system])
    module.preload()
    probe = Probe()

    def finish() -> None:
        sys.stdout.write(probe.summary() + "\n")
        sys.stdout.flush()
        os._exit(0)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, finish)
        times = os.times()
        probe.cpu_at_start = times.user + times.system
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        await module.serve(dsn, concurrency, probe)

    loop = os.environ.get("BENCH_LOOP") or getattr(module, "LOOP", "asyncio")
    if loop == "kubetask":
        from kubetask import worker

        worker.run_loop(serve())
    elif loop == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
