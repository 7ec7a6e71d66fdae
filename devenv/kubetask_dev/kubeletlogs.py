"""The harness's kubelet endpoint: container logs over HTTPS, so ``kubectl logs`` works on the fake nodes.

The API server answers ``GET /api/v1/namespaces/NS/pods/NAME/log`` by calling
the kubelet of the pod's node, at the node's InternalIP and
``status.daemonEndpoints.kubeletEndpoint.Port``:
``GET /containerLogs/NS/NAME/CONTAINER?follow=…&tailLines=…&limitBytes=…``.
The fake nodes name this server there (127.0.0.1 and a port the control plane
chose), and it serves the files the harness writes its processes' output to.
It is the only kubelet API the harness offers: exec, attach and port-forward
get a 404.

Only the API server may read. The server requires a client certificate signed
by the cluster CA, and its subject must be the API server's kubelet client
(``--kubelet-client-certificate``): a real kubelet authenticates the caller
and asks the API server whether it may read ``nodes/log``; one fixed identity
is that check for a cluster whose only legitimate caller is its API server.
The serving certificate comes from the same CA (the API server does not verify
it: no ``--kubelet-certificate-authority``).

The query follows the kubelet: ``tailLines`` counts lines from the end (a last
line without a newline is a line), ``limitBytes`` caps the bytes sent after
that, ``follow`` streams what the process writes until it has exited and all
of its output has been sent. The files hold raw output with no times, so
``timestamps``, ``sinceSeconds`` and ``sinceTime`` are accepted and ignored;
``previous`` is refused, as the harness keeps one file per pod, not one per
container restart.

TLS is negotiated in the connection's own thread, not in the accepting one, so
a client that stalls its handshake holds up nobody else.
"""

from __future__ import annotations

import dataclasses
import http.server
import logging
import os
import pathlib
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from typing import IO, Any

from kubetask_dev import controlplane

API_SERVER_SUBJECT = "kube-apiserver-kubelet-client"
"""The CN of the API server's kubelet client certificate (``controlplane.make_pki``): the one reader allowed."""
SERVING_CERT = "kubelet-serving"
FOLLOW_POLL_SECONDS = 0.1
"""How often a followed log is checked for new output (the process's exit ends the wait at once)."""
CHUNK = 64 * 1024

log = logging.getLogger("kubetask_dev.kubeletlogs")


@dataclasses.dataclass(frozen=True)
class LogSource:
    """One container's output: the file it goes to and whether the process writing it has exited."""

    path: pathlib.Path
    exited: threading.Event
    """Set once the process has exited and been reaped: the file holds everything it will ever write."""


class Unavailable(Exception):
    """No log to serve: ``status`` and ``message`` are what the kubelet answers in that case."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Lookup = Callable[[str, str, str], LogSource]
"""(namespace, pod, container) → the log, or ``Unavailable``."""


def ensure_serving_certificate(pki: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    cert, key = pki / f"{SERVING_CERT}.crt", pki / f"{SERVING_CERT}.key"
    if not cert.exists():
        controlplane.serving_certificate(pki, SERVING_CERT, "/CN=kubetask-dev-kubelet")
    return cert, key


def tail_offset(file: IO[bytes], lines: int) -> int:
    """Where the last ``lines`` lines of ``file`` begin; a newline that ends the file does not begin a line."""
    end = file.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    found = 0
    pos = end
    while pos > 0:
        size = min(CHUNK, pos)
        pos -= size
        file.seek(pos)
        block = file.read(size)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            if pos + index == end - 1:
                continue
            found += 1
            if found == lines:
                return pos + index + 1
    return 0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, context: ssl.SSLContext, lookup: Lookup, stopping: threading.Event) -> None:
        self.context = context
        self.lookup = lookup
        self.stopping = stopping
        super().__init__(("127.0.0.1", port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)  # a stalled handshake or reader; a follow's idle wait does not touch the socket
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.info("refused a connection from %s: %s", client_address, err)
            return
        try:
            _Handler(tls, client_address, self)
        finally:
            try:
                tls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("log request from %s failed", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject: Any = (peer or {}).get("subject", ())
        names = [value for rdn in subject for key, value in rdn if key == "commonName"]
        if names != [API_SERVER_SUBJECT]:
            self._refuse(403, f"Forbidden (user={names}, verb=get, resource=nodes, subresource=log)")
            return
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        if len(parts) != 5 or parts[1] != "containerLogs" or not all(parts[2:]):
            self._refuse(404, "404 page not found")
            return
        namespace, pod, container = (urllib.parse.unquote(p) for p in parts[2:])
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if query.get("previous") in ("true", "1"):
            self._refuse(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            return
        try:
            tail = int(query["tailLines"]) if "tailLines" in query else None
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
        except ValueError as err:
            self._refuse(400, f"bad query: {err}")
            return
        try:
            source = self.server.lookup(namespace, pod, container)
        except Unavailable as err:
            self._refuse(err.status, err.message)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # no length: the body ends when the connection closes (HTTP/1.0), as a stream must
        self._stream(source, tail, limit, follow=query.get("follow") in ("true", "1"))

    def _stream(self, source: LogSource, tail: int | None, limit: int | None, follow: bool) -> None:
        with open(source.path, "rb") as file:
            file.seek(tail_offset(file, tail) if tail is not None else 0)
            sent = 0
            while limit is None or sent < limit:
                # Read after looking at the exit: output written before the exit is then surely read.
                complete = source.exited.is_set()
                chunk = file.read(CHUNK if limit is None else min(CHUNK, limit - sent))
                if chunk:
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    continue
                if not follow or complete or self.server.stopping.is_set():
                    return
                source.exited.wait(FOLLOW_POLL_SECONDS)


class LogServer:
    """The HTTPS server on 127.0.0.1:``port``, serving in daemon threads until ``close``."""

    def __init__(self, pki: pathlib.Path, port: int, lookup: Lookup) -> None:
        cert, key = ensure_serving_certificate(pki)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(cafile=str(pki / "ca.crt"))
        context.verify_mode = ssl.CERT_REQUIRED
        self.stopping = threading.Event()
        self.server = _Server(port, context, lookup, self.stopping)
        self.thread = threading.Thread(target=self.server.serve_forever, name="kubelet-logs", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("serving container logs on https://127.0.0.1:%d", self.server.server_address[1])

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
