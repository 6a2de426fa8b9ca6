"""Bad input never takes meshd down: every bad document is rejected with one log event
naming the file, the object and the reason, and the last good version stays in force."""
from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from controlplane.config.store import ConfigStore
from controlplane.sources.directory import DirectorySource

GOOD_VS = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: webapp, namespace: istioinaction}
spec:
  hosts: [webapp.istioinaction.io]
  gateways: [coolstore-gateway]
  http:
  - route:
    - destination: {host: webapp, port: {number: 80}}
"""


def load(tmp_path: Path, files: dict[str, str | bytes]):
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    store = ConfigStore()
    src = DirectorySource(tmp_path, store)
    with capture_logs() as logs:
        src.load()
    return store, src, logs


def rejections(logs):
    return [e for e in logs if e["event"] == "config rejected"]


def test_good_objects_load_with_default_namespace(tmp_path):
    store, _, logs = load(tmp_path, {"a.yaml": GOOD_VS, "b.yml": GOOD_VS.replace("namespace: istioinaction", "").replace("name: webapp,", "name: other")})
    snap = store.snapshot()
    assert snap.get("VirtualService", "istioinaction", "webapp") is not None
    assert snap.get("VirtualService", "default", "other") is not None
    assert rejections(logs) == []


@pytest.mark.parametrize(
    "text, field, reason_part",
    [
        ("kind: [unclosed\n", "", "invalid YAML"),
        (b"\x00\x01\x02binary", "", "binary"),
        ("metadata: {name: x}\nspec: {}\n", "apiVersion", "Required value"),
        ("apiVersion: networking.istio.io/v1\nmetadata: {name: x}\n", "kind", "Required value"),
        (GOOD_VS.replace("number: 80", "number: eighty"), "spec.http[0].route[0].destination.port.number", ""),
        (GOOD_VS.replace("  http:", "  htp:"), "spec.htp", "unknown field"),
        (GOOD_VS.replace("    - destination: {host: webapp, port: {number: 80}}", "    - weight: 100"), "spec.http[0].route[0].destination", ""),
        ("a: 1\na: 2\n", "", "duplicate key"),
    ],
    ids=["not-yaml", "binary", "no-apiVersion", "no-kind", "wrong-type", "unknown-field", "no-destination", "duplicate-key"],
)
def test_bad_documents_are_rejected_with_file_object_field_reason(tmp_path, text, field, reason_part):
    store, _, logs = load(tmp_path, {"bad.yaml": text, "good.yaml": GOOD_VS.replace("name: webapp,", "name: fine,")})
    rej = rejections(logs)
    assert len(rej) == 1, logs
    ev = rej[0]
    assert ev["file"].endswith("bad.yaml")
    assert (ev["field"] or "") == field
    assert reason_part.lower() in ev["reason"].lower()
    if field.startswith("spec"):
        assert ev["object"] == "VirtualService istioinaction/webapp"
        assert "VirtualService istioinaction/webapp" in ev["message"] and field in ev["message"]
    # every other object keeps working
    assert store.snapshot().get("VirtualService", "istioinaction", "fine") is not None
    assert store.rejections()[0].origin.location.endswith("bad.yaml")


def test_http_route_without_any_action_is_rejected(tmp_path):
    text = GOOD_VS.replace("  - route:\n    - destination: {host: webapp, port: {number: 80}}\n", "  - match: [{uri: {prefix: /}}]\n")
    _, _, logs = load(tmp_path, {"vs.yaml": text})
    (ev,) = rejections(logs)
    assert ev["object"] == "VirtualService istioinaction/webapp"
    assert ev["field"].startswith("spec.http[0]")


def test_last_good_version_stays_in_force(tmp_path):
    store, src, _ = load(tmp_path, {"vs.yaml": GOOD_VS})
    before = store.snapshot().get("VirtualService", "istioinaction", "webapp")
    (tmp_path / "vs.yaml").write_text(GOOD_VS.replace("number: 80", "number: eighty") + "\n# edit\n")
    with capture_logs() as logs:
        results, removed = src._changes(settle=False)
        src._apply(results, removed)
    assert len(rejections(logs)) == 1
    assert store.snapshot().get("VirtualService", "istioinaction", "webapp") is before
    # a file that stops being YAML keeps all its objects too
    (tmp_path / "vs.yaml").write_text("{{{ not yaml")
    with capture_logs() as logs:
        src._apply(*src._changes(settle=False))
    assert len(rejections(logs)) == 1
    assert store.snapshot().get("VirtualService", "istioinaction", "webapp") is before
    # a fixed file replaces it; a deleted file removes it
    (tmp_path / "vs.yaml").write_text(GOOD_VS.replace("number: 80", "number: 8080"))
    src._apply(*src._changes(settle=False))
    now = store.snapshot().get("VirtualService", "istioinaction", "webapp")
    assert now is not before and now.spec["http"][0]["route"][0]["destination"]["port"]["number"] == 8080
    (tmp_path / "vs.yaml").unlink()
    src._apply(*src._changes(settle=False))
    assert store.snapshot().get("VirtualService", "istioinaction", "webapp") is None


def test_unsupported_istio_kind_reported_once_and_k8s_kinds_skipped_quietly(tmp_path):
    se = """
apiVersion: networking.istio.io/v1beta1
kind: ProxyConfig
metadata: {name: external}
spec: {concurrency: 2}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {a: b}
"""
    store, src, logs = load(tmp_path, {"se.yaml": se})
    unsupported = [e for e in logs if e["event"] == "config unsupported"]
    assert [e["object"] for e in unsupported] == ["ProxyConfig default/external"]
    assert rejections(logs) == []
    assert len(store.snapshot()) == 0
    (tmp_path / "se.yaml").write_text(se + "\n# touched\n")
    with capture_logs() as logs:
        src._apply(*src._changes(settle=False))
    assert [e for e in logs if e["event"] == "config unsupported"] == []


def test_conflicting_definitions_first_one_wins(tmp_path):
    store, src, logs = load(tmp_path, {"a.yaml": GOOD_VS, "b.yaml": GOOD_VS.replace("number: 80", "number: 81")})
    (ev,) = rejections(logs)
    assert ev["file"].endswith("b.yaml") and "conflict" in ev["reason"]
    obj = store.snapshot().get("VirtualService", "istioinaction", "webapp")
    assert obj.origin.location.endswith("a.yaml")
    (tmp_path / "a.yaml").unlink()
    src._apply(*src._changes(settle=False))
    obj = store.snapshot().get("VirtualService", "istioinaction", "webapp")
    assert obj.origin.location.endswith("b.yaml")


def test_anchor_bomb_and_huge_file_rejected(tmp_path):
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    huge = "# " + "x" * (9 * 1024 * 1024)
    _, _, logs = load(tmp_path, {"bomb.yaml": bomb, "huge.yaml": huge})
    reasons = {e["file"].rsplit("/", 1)[1]: e["reason"] for e in rejections(logs)}
    assert "alias" in reasons["bomb.yaml"]
    assert "limit" in reasons["huge.yaml"]


def test_bundled_example_loads_clean():
    from controlplane.cli import EXAMPLES_DIR

    store = ConfigStore()
    with capture_logs() as logs:
        DirectorySource(EXAMPLES_DIR, store).load()
    assert rejections(logs) == []
    kinds = sorted({o.kind for o in store.snapshot()})
    assert kinds == ["EndpointSlice", "Gateway", "Namespace", "Service", "VirtualService"]
