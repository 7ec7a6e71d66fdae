"""What the chart's securityContext promises, checked from inside the running containers."""

from __future__ import annotations

import ipaddress

from kubetask_dev import node

from tests.node.conftest import NodeRelease

IDENTITY = """
import json, os
try:
    open('/probe', 'w')
    writable = True
except OSError:
    writable = False
open('/tmp/probe', 'w').write('ok')  # the chart's emptyDir
print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'root_writable': writable,
                  'token': os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token')}))
"""

NETWORK = """
import json, socket
def resolve(name):
    try:
        return socket.gethostbyname(name)
    except OSError:
        return None
routes = [line.split() for line in open('/proc/net/route').read().splitlines()[1:]]
print(json.dumps({'kubernetes': resolve('kubernetes.default.svc'),
                  'elsewhere': resolve('pypi.org'),
                  'routes': [[r[1], r[7]] for r in routes]}))
"""


def test_containers_run_as_65532_on_a_read_only_root(release: NodeRelease) -> None:
    for component in ("operator", "worker"):
        pod = release.ready_pod(component)["metadata"]["name"]
        seen = release.exec(pod, IDENTITY)
        assert (seen["uid"], seen["gid"]) == (65532, 65532), (component, seen)
        assert seen["root_writable"] is False, f"{component}: / is writable"
        # Workers talk only to PostgreSQL: no Kubernetes credentials at all; the operator needs its token.
        assert seen["token"] is (component == "operator"), (component, seen)


def test_pods_resolve_cluster_names_and_have_no_route_off_the_bridge(release: NodeRelease) -> None:
    pod = release.ready_pod("worker")["metadata"]["name"]
    seen = release.exec(pod, NETWORK)
    assert seen["kubernetes"] == "10.96.0.1"
    assert seen["elsewhere"] is None, "CoreDNS must answer cluster.local only"
    def network(hex_dst: str, hex_mask: str) -> ipaddress.IPv4Network:
        dst = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(hex_dst), "little"))
        mask = ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(hex_mask), "little"))
        return ipaddress.IPv4Network(f"{dst}/{mask}")
    routes = {network(dst, mask) for dst, mask in seen["routes"]}
    assert routes == {ipaddress.IPv4Network(node.POD_CIDR), ipaddress.IPv4Network(node.SERVICE_CIDR)}, routes
