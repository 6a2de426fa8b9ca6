"""Mesh test bed: pods as Linux network namespaces with Istio's iptables interception.

    from tests.testbed import TestBed

    with TestBed() as bed:
        web = bed.add_pod("webapp", sidecar=True)  # namespace + eth0 + istio-init rules
        sleep = bed.add_pod("sleep")               # a client outside the mesh
        web.run_echo(http=[8080])
        web.forward_to_host(meshd.xds_port, pod_port=15010)  # meshd at 127.0.0.1:15010 in the pod
        envoy = web.start_envoy(bootstrap_dict)              # runs as uid 1337
        sleep.curl(f"http://{web.ip}:8080/")

Pytest: the `testbed` fixture (tests/testbed/fixtures.py, a plugin of tests/conftest.py; skips
unless root). Modules: netns (namespaces), bed (TestBed, Pod, Envoy), iptables (istio-init
rules), sidecar (a static interception bootstrap), echo (a test app), forward (pod ->
host TCP forwarder). See bed.py's docstring for the topology and how pods reach meshd.
"""
from .bed import Envoy, Pod, Process, TestBed, host_snapshot, wait_for
from .iptables import install_istio_redirect, istio_rules

__all__ = ["Envoy", "Pod", "Process", "TestBed", "host_snapshot", "install_istio_redirect", "istio_rules", "wait_for"]
