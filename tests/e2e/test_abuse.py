"""Abuse by one tenant, through the real API server: no single object may stop the operator's loops.

Each case failed before its fix (issue 20).
"""

from __future__ import annotations

import pathlib

from kubetask_dev import devstack

from tests.stack import Stack, task


def _phase(e2e: Stack, namespace: str, name: str, path: str = "{.status.phase}") -> str:
    # jsonpath, not `-o json`: the test's own json.loads would choke on the object this file is about.
    return e2e.plane.kubectl("get", "task", name, "-n", namespace, "-o", f"jsonpath={path}").stdout


def test_a_payload_nested_5000_deep_is_refused_and_the_watch_carries_on(e2e: Stack, namespace: str,
                                                                         tmp_path: pathlib.Path) -> None:
    levels = 5000
    body = ('{"apiVersion": "kubetask.io/v1alpha1", "kind": "Task", "metadata": {"name": "deep"}, '
            '"spec": {"type": "echo", "payload": ' + '{"a": ' * levels + "{}" + "}" * levels + "}}")
    manifest = tmp_path / "deep.json"
    manifest.write_text(body)
    e2e.plane.kubectl("create", "--raw", f"/apis/kubetask.io/v1alpha1/namespaces/{namespace}/tasks",
                      "-f", str(manifest))
    devstack.wait_for(lambda: _phase(e2e, namespace, "deep") == "DeadLetter" or None, 60,
                      "the deep Task to be refused", interval=0.2)
    assert "nested" in _phase(e2e, namespace, "deep", "{.status.lastError.message}")
    e2e.apply(task(namespace, "echo", "after", payload={"still": "served"}))
    assert e2e.wait_phase(namespace, "after", "Succeeded")["status"]["result"] == {"still": "served"}
