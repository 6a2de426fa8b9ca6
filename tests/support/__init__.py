"""The test base: what unit and end-to-end tests share, so that no test module imports
another (tests/unit/test_test_imports.py keeps it so).

Where things are:
- paths.py: REPO, SHARED, shared() (the only way to ../shared).
- harness.py: meshd as a process (meshd, MeshdHandle, meshd_cli), Process, free ports,
  wait_for, HTTP backends and a request loop (Traffic), atomic config writes.
- envoy.py: Envoy from `meshd bootstrap` (envoy, EnvoyHandle), static bootstraps around
  filters (StaticEnvoy), envoy_validate; static_xds.py: a proxy's generated resources as
  one static bootstrap.
- ads.py: ADS clients (ads_fetch, SotwStream, DeltaStream); ads_server.py: meshd's ADS
  server in the test's process (Harness, DeltaHarness, FakeGenerator).
- manifests.py: Kubernetes and Istio objects as small functions, documents() for YAML;
  configs.py: YAML through the real parse gate into snapshots and meshes.
- chapter9.py (the generator tests' layout), ingress.py (the foundation story's files),
  operator_view.py, rotation.py, authorization.py, sds.py: the set-ups several tests share.
- mesh_changes.py: random change sequences of a small mesh (generator cache tests).
- pki.py (certificates, cacerts), jwt.py (issuers, tokens, key servers), traffic.py
  (backends that echo, fail, stall; curl).
- kube.py: the real kube-apiserver of ../shared/k8s (one per session: kube_fixtures.py,
  `kube`), a recording client and proxy; kube_source.py: driving the Kubernetes source;
  kube_log.py and rbac.py: request logs and the RBAC check; kubeapi/: the stand-in API
  server, for what a real one cannot be made to do on demand (`kubeapi`).

The network-namespace test bed is tests/testbed/ (it builds on this package).
"""
