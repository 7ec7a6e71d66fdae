"""The operator SIGKILLed twice in the middle of a burst of 1,000 Task creations.

Each restart relists every Task: whatever the dead operator had admitted must
not be admitted again, whatever it had not must be, and every status must
converge to the row.
"""

from __future__ import annotations

import json
import threading
import time

from kubetask_dev import devstack

from tests.faults import audit
from tests.stack import Stack, task

COUNT = 1000
CHUNK = 100


def test_operator_killed_twice_during_1000_creations_admits_each_once(e2e: Stack, namespace: str) -> None:
    queue = "relisted"
    e2e.add_pool(queue, max_replicas=3, concurrency=16, scale_down_delay=5)
    manifests = [task(namespace, "echo", f"r{i:04d}", queue=queue, payload={"i": i}) for i in range(COUNT)]
    chunks = [manifests[i:i + CHUNK] for i in range(0, COUNT, CHUNK)]
    created = [0]
    errors: list[str] = []

    def create() -> None:
        for chunk in chunks:
            body = {"apiVersion": "v1", "kind": "List", "items": chunk}
            result = e2e.plane.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
            if result.returncode != 0:
                errors.append(result.stderr[-500:])
            created[0] += len(chunk)

    try:
        started = time.monotonic()
        creator = threading.Thread(target=create, daemon=True)
        creator.start()
        kills = 0
        for after in (COUNT * 3 // 10, COUNT * 7 // 10):
            devstack.wait_for(lambda: created[0] >= after, 120, f"{after} Tasks created", interval=0.05)
            e2e.stop_operator(kill=True)
            kills += 1
            e2e.start_operator()
        creator.join(timeout=120)
        assert not creator.is_alive() and not errors, errors
        done = audit.wait_finished(e2e.dsn, namespace, COUNT, timeout=120)
        assert done == COUNT, f"{done}/{COUNT} finished; unfinished:\n" + "\n".join(
            map(str, audit.unfinished(e2e.dsn, namespace)))
        assert audit.wait_mirrored(e2e.dsn, namespace, 60) == 0, "statuses still behind their rows"
        items = e2e.wait_all(namespace, ("Succeeded",), COUNT, timeout=60)
        elapsed = time.monotonic() - started

        rows = e2e.sql("SELECT uid::text AS uid, name, state, attempts, result FROM kubetask_tasks WHERE namespace = %s",
                       namespace)
        assert len(rows) == COUNT, f"{len(rows)} rows for {COUNT} Tasks"
        by_uid = {r["uid"]: r for r in rows}
        assert set(by_uid) == {i["metadata"]["uid"] for i in items}, "every Task admitted exactly once, by uid"
        mismatched = [i["metadata"]["name"] for i in items
                      if (i["status"]["phase"], i["status"]["attempts"], i["status"]["result"])
                      != ("Succeeded", by_uid[i["metadata"]["uid"]]["attempts"], by_uid[i["metadata"]["uid"]]["result"])]
        twice = e2e.sql("SELECT count(*) AS n FROM kubetask_attempts a JOIN kubetask_tasks t ON t.id = a.task_id"
                        " WHERE t.namespace = %s AND a.number > 1", namespace)[0]["n"]
        print(f"\noperator SIGKILL x{kills} during {COUNT} creations: rows={len(rows)} mismatched={len(mismatched)}"
              f" second-attempts={twice} elapsed={elapsed:.1f}s")
        assert not mismatched, mismatched[:10]
        assert all(r["attempts"] == 1 for r in rows), "an echo needed more than one attempt"
    finally:
        e2e.remove_pool(queue)
