"""``kubetask logs``: a container Task's output, live from its pod, else as its tail stored in PostgreSQL.

A container attempt's output lives in two places over its life. While the
attempt's pod exists it is the pod's log, read through the API server as
``kubectl logs`` reads it (so RBAC's ``pods/log`` applies, and ``-f`` follows
it until the container ends). Once the pod has ended, the leader keeps the
last ``model.LOG_TAIL_BYTES`` of it in the attempt's row and deletes the pod;
from then on the command prints that stored tail, and says so on stderr. A pod
that disappears while followed is finished from the stored tail: only the part
not printed yet, when the two overlap.

A handler Task has no log of its own: its output is in the log of the worker
that ran it, among every other task that worker ran, so the command names that
worker pod and exits with the usage code.

PostgreSQL holds every namespace's logs. As ``history`` does, the command shows
one only to who may read it through Kubernetes: get on Tasks, and get on
``pods/log`` (the right the live log needs, so a pod's end does not widen who
may read its output), both asked of the API server (SelfSubjectAccessReview)
unless ``--no-access-check``. The Task is found by name in PostgreSQL, so a
deleted Task's logs are still there. The log itself is written as it is, bytes
for bytes, as ``kubectl logs`` does; only the command's own notes are escaped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import kubetask.logs
from kubetask import states
from kubetask.cli import history, tasks, terminal

POLL_SECONDS = 1.0
"""How often ``-f`` looks again for a pod not started yet, or for the tail of a pod that just went."""
STATUS_WAIT_SECONDS = 10.0
"""How long, after a followed log stream ended, the pod may take to say its container ended (a kubelet
closes the stream when the container exits, and reports the exit a moment later)."""
OVERLAP_MIN_BYTES = 256
"""Shortest overlap between what was streamed and the stored tail trusted as where they meet: shorter
ones (a blank line, a repeated prompt) match by chance."""


def logs(args: argparse.Namespace) -> int:
    from kubetask import db, model

    namespace = tasks.namespace_of(args)
    if args.attempt is not None and args.attempt < 1:
        raise terminal.CliError("--attempt counts from 1", terminal.EXIT_USAGE)
    if not args.no_access_check:
        history.check_access(args, namespace)

    async def read(conn: Any) -> tuple[Any, Any]:
        rows = await db.reads.find_tasks(conn, namespace, args.name)
        if not rows:
            return None, None
        return rows[0], await db.reads.attempt_log(conn, rows[0].uid, args.attempt)

    task, attempt = asyncio.run(history.with_db(read))
    what = f"Task {namespace}/{args.name}"
    if task is None:
        raise terminal.CliError(f"no {what} in PostgreSQL (it was never admitted, or its history was cleaned)",
                                terminal.EXIT_NOT_FOUND)
    if task.type != model.CONTAINER_TYPE:
        raise terminal.CliError(handler_message(what, task.type, attempt), terminal.EXIT_USAGE)
    if attempt is None:
        if args.attempt is not None:
            raise terminal.CliError(f"{what} has no attempt {args.attempt} (it has had {task.attempts})",
                                    terminal.EXIT_NOT_FOUND)
        raise terminal.CliError(f"{what} has not started an attempt yet ({task.state}): there is no log yet",
                                terminal.EXIT_NOT_FOUND)
    import kubernetes

    try:
        api = tasks.api_client()._api_client()
    except kubernetes.config.ConfigException:  # no kubeconfig, no in-cluster credentials
        if not args.no_access_check:
            raise
        api = None  # the database's administrator without a kubeconfig: the stored tail is all there is
    try:
        if not args.no_access_check and not _may_read_pod_logs(api, namespace):
            raise terminal.CliError(
                f"you may not get pods/log in namespace {namespace} (the API server's SelfSubjectAccessReview "
                "said no), so neither the live log nor the tail stored in PostgreSQL is shown: ask for get on "
                "pods/log there, or, as the database's administrator, pass --no-access-check",
                terminal.EXIT_FORBIDDEN)
        return _Show(args, api, task, attempt).run()
    except KeyboardInterrupt:
        return 130  # the shell's code for SIGINT: stopping a follow is no error of ours
    finally:
        if api is not None:
            api.close()


def handler_message(what: str, handler: str, attempt: Any) -> str:
    """Why a handler Task has no log of its own, and where its output is."""
    pod = kubetask.logs.printable(attempt.worker_pod) if attempt is not None else ""
    where = (f"attempt {attempt.number} ran on worker pod {pod} (`kubectl logs {pod}` in the workers' namespace "
             "shows it, with the other tasks that worker ran)" if attempt is not None else "it has not run yet")
    return (f"{what} runs handler {kubetask.logs.printable(handler)!r}: handler Tasks' output is in the worker's "
            f"logs, not kept per Task; {where}. `kubetask logs` is for Tasks with spec.container")


def was_cut(tail: str) -> bool:
    """Whether a stored tail is the end of a longer log: it fills ``LOG_TAIL_BYTES`` (less a character cut
    at its start)."""
    from kubetask import model

    return len(tail.encode()) >= model.LOG_TAIL_BYTES - 3


def unseen(shown: bytes, shown_total: int, tail: bytes) -> bytes | None:
    """The part of ``tail`` after what was already printed, or None when where they meet cannot be told.

    ``shown`` is the end of what was printed (``shown_total`` bytes in all), from the start of the log;
    ``tail`` is the log's end. The longest prefix of ``tail`` that ends ``shown`` is where they meet (KMP,
    linear in both); it is trusted when it is all that was printed, or long enough not to be chance.
    """
    if shown_total == 0:
        return tail
    if not tail:
        return b""
    window = shown[-len(tail):]
    fail = [0] * len(tail)
    k = 0
    for i in range(1, len(tail)):
        while k and tail[i] != tail[k]:
            k = fail[k - 1]
        if tail[i] == tail[k]:
            k += 1
        fail[i] = k
    k = 0
    for byte in window:
        while k and (k == len(tail) or byte != tail[k]):
            k = fail[k - 1]
        if k < len(tail) and byte == tail[k]:
            k += 1
    if k == shown_total or k >= min(OVERLAP_MIN_BYTES, len(tail)):
        return tail[k:]
    return None


def ending(attempt: Any) -> str:
    """``ended failed (OOMKilled, exit 137)``, or ``is running``: how an attempt ended, as far as it has."""
    if attempt.outcome == states.Outcome.RUNNING:
        return "is running"
    details = ", ".join(d for d in (attempt.reason, None if attempt.exit_code is None else f"exit {attempt.exit_code}")
                        if d)
    return kubetask.logs.printable(f"ended {attempt.outcome} ({details})" if details else f"ended {attempt.outcome}")


def _note(message: str) -> None:
    print(f"kubetask logs: {message}", file=sys.stderr, flush=True)


def _may_read_pod_logs(api: Any, namespace: str) -> bool:
    import kubernetes

    review = kubernetes.client.V1SelfSubjectAccessReview(spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=kubernetes.client.V1ResourceAttributes(
            resource="pods", subresource="log", verb="get", namespace=namespace)))
    answer = kubernetes.client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return answer.status is not None and bool(answer.status.allowed)


def _api_message(err: Any) -> str:
    import json

    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        return str(err.body or err.reason)


class _Show:
    """One run of the command: the live log while the attempt's pod is there, then (or else) the stored tail."""

    def __init__(self, args: argparse.Namespace, api: Any, task: Any, attempt: Any) -> None:
        import kubernetes

        self.args, self.task, self.attempt = args, task, attempt
        self.core = None if api is None else kubernetes.client.CoreV1Api(api)
        self.what = f"attempt {attempt.number} of Task {task.namespace}/{task.name}"
        self.shown = bytearray()
        """The end of what was printed of the live log (at most LOG_TAIL_BYTES: all the tail can overlap)."""
        self.shown_total = 0

    def run(self) -> int:
        import kubernetes

        follow, unreadable = bool(self.args.follow), None
        while True:
            pod = self._pod()
            if pod is not None:
                try:
                    self._stream(pod.metadata.name, follow)
                except kubernetes.client.ApiException as err:
                    if err.status in (401, 403):
                        raise
                    message = _api_message(err)
                    if err.status == 400 and "waiting to start" in message:
                        if not follow:
                            raise terminal.CliError(f"{self.what}: {kubetask.logs.printable(message)}; -f waits "
                                                    "for it to start",
                                                    terminal.EXIT_FAILED) from None
                        time.sleep(POLL_SECONDS)
                        continue
                    if self._pod() is not None:  # the pod is there, its log is not (its node out of reach)
                        unreadable = f"cannot read the log of pod {pod.metadata.name}: {message}"
                else:
                    if not follow:
                        return terminal.EXIT_OK
                    after = self._after_stream()
                    if after is not None and _ended(after):
                        return terminal.EXIT_OK
                    if after is not None:
                        raise terminal.CliError(
                            f"{self.what}: the log stream of pod {after.metadata.name} ended while its container "
                            "still runs; run the command again to read on", terminal.EXIT_FAILED)
                    # The pod went while followed: what is left comes from the stored tail.
            self.attempt = self._refresh()
            if self.attempt.log_tail is None and unreadable is not None:
                raise terminal.CliError(f"{self.what}: {kubetask.logs.printable(unreadable)}, and no log tail is "
                                        "stored in PostgreSQL yet", terminal.EXIT_FAILED)
            if self.attempt.log_tail is None and follow and self.attempt.outcome == states.Outcome.RUNNING:
                time.sleep(POLL_SECONDS)  # the pod is not created yet, or its tail is being stored
                continue
            return self._stored(unreadable)

    def _pod(self) -> Any:
        from kubetask import model

        if self.core is None:
            return None
        selector = f"{model.TASK_UID_LABEL}={self.task.uid},{model.ATTEMPT_LABEL}={self.attempt.number}"
        pods = self.core.list_namespaced_pod(self.task.namespace, label_selector=selector).items
        return pods[0] if pods else None

    def _after_stream(self) -> Any:
        """The pod once it says its container ended, or None once it is gone; still running after
        STATUS_WAIT_SECONDS, the pod as it is."""
        deadline = time.monotonic() + STATUS_WAIT_SECONDS
        while True:
            pod = self._pod()
            if pod is None or _ended(pod) or time.monotonic() > deadline:
                return pod
            time.sleep(POLL_SECONDS / 5)

    def _stream(self, pod: str, follow: bool) -> None:
        import urllib3

        from kubetask import model

        # Not preloaded: the urllib3 response itself, read as the kubelet writes (the client types it str).
        assert self.core is not None  # only a pod found through the API server is streamed
        response: Any = self.core.read_namespaced_pod_log(pod, self.task.namespace, container=model.TASK_CONTAINER,
                                                     follow=follow, _preload_content=False)
        out = sys.stdout.buffer
        try:
            for chunk in response.stream(64 * 1024, decode_content=True):
                out.write(chunk)
                out.flush()
                self.shown_total += len(chunk)
                self.shown += chunk
                del self.shown[:-model.LOG_TAIL_BYTES]
        except urllib3.exceptions.HTTPError:
            pass  # the stream broke (the pod deleted under it, say): the caller looks at the pod again
        finally:
            response.release_conn()

    def _refresh(self) -> Any:
        from kubetask import db

        async def read(conn: Any) -> Any:
            return await db.reads.attempt_log(conn, self.task.uid, self.attempt.number)

        return asyncio.run(history.with_db(read)) or self.attempt

    def _stored(self, unreadable: str | None) -> int:
        from kubetask import model

        attempt = self.attempt
        tail = attempt.log_tail
        if tail is None and attempt.outcome == states.Outcome.RUNNING:
            raise terminal.CliError(
                f"{self.what} is running, but its pod is not there (not created yet, or ending) and no log tail "
                "is stored yet; -f waits for it", terminal.EXIT_NOT_FOUND)
        if tail is None:
            raise terminal.CliError(
                f"{self.what} {ending(attempt)} and left no log: its pod never started, or was gone before "
                "its log could be read", terminal.EXIT_NOT_FOUND)
        why = (kubetask.logs.printable(unreadable) if unreadable is not None else
               f"its pod {kubetask.logs.printable(attempt.worker_pod)} is gone")
        cut = f", cut to its last {model.LOG_TAIL_BYTES // 1024} KiB" if was_cut(tail) else ""
        data = tail.encode()
        rest = unseen(bytes(self.shown), self.shown_total, data)
        if self.shown_total:
            _note(f"{self.what}: {why}; the rest of its log from the tail stored in PostgreSQL{cut}:" if rest
                  is not None else f"{self.what}: {why}; the tail stored in PostgreSQL{cut} follows in full, and "
                  "may repeat the end of what was shown:")
        else:
            _note(f"{self.what} {ending(attempt)}; {why}, so this is the tail of its log stored in "
                  f"PostgreSQL{cut}:")
        sys.stdout.buffer.write(data if rest is None else rest)
        sys.stdout.buffer.flush()
        return terminal.EXIT_OK


def _ended(pod: Any) -> bool:
    """Whether the pod's task container has terminated (or the whole pod has)."""
    from kubetask import model

    if pod.status is None:
        return False
    if pod.status.phase in ("Succeeded", "Failed"):
        return True
    for status in pod.status.container_statuses or ():
        if status.name == model.TASK_CONTAINER:
            return status.state is not None and status.state.terminated is not None
    return False
