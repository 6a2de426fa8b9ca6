"""The Gateway API status meshd writes back (controlplane/kube/gateway_status.py): only
meshd's part of it changes, conditions carry observedGeneration and keep their
lastTransitionTime while their status holds, an unchanged verdict writes nothing."""
from __future__ import annotations

import asyncio

from controlplane.config import kinds
from controlplane.config.objects import ConfigKey
from controlplane.kube.gateway_status import rejected_message, status_patch
from controlplane.kube.resources import RESOURCES, ObjectInfo
from controlplane.kube.status import StatusWriter
from controlplane.names import GATEWAY_API_CONTROLLER

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"


def cond(type_, status="True", reason=None, message="ok"):
    return {"type": type_, "status": status, "reason": reason or type_, "message": message}


GATEWAY = {"conditions": [cond("Accepted"), cond("Programmed")],
           "listeners": [{"name": "http", "attachedRoutes": 1,
                          "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                          "conditions": [cond("Accepted"), cond("ResolvedRefs")]}],
           "addresses": [{"type": "IPAddress", "value": "10.0.0.1"}]}


def test_a_gateway_gets_conditions_listeners_and_addresses_stamped():
    patch = status_patch("Gateway", {}, GATEWAY, 3, now=lambda: T0)
    assert patch is not None
    assert [c["type"] for c in patch["conditions"]] == ["Accepted", "Programmed"]
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == T0 for c in patch["conditions"])
    listener = patch["listeners"][0]
    assert listener["attachedRoutes"] == 1 and listener["conditions"][1]["observedGeneration"] == 3
    assert patch["addresses"] == [{"type": "IPAddress", "value": "10.0.0.1"}]


def test_the_same_verdict_writes_nothing_and_a_change_keeps_unchanged_transition_times():
    written = status_patch("Gateway", {}, GATEWAY, 3, now=lambda: T0)
    assert status_patch("Gateway", written, GATEWAY, 3, now=lambda: T1) is None
    # a new generation: written again (observedGeneration), transition times kept
    again = status_patch("Gateway", written, GATEWAY, 4, now=lambda: T1)
    assert again is not None and {c["lastTransitionTime"] for c in again["conditions"]} == {T0}
    # Programmed turns False: only its time moves
    broken = {**GATEWAY, "conditions": [cond("Accepted"), cond("Programmed", "False", "Invalid")]}
    patch = status_patch("Gateway", written, broken, 3, now=lambda: T1)
    assert {c["type"]: c["lastTransitionTime"] for c in patch["conditions"]} == {"Accepted": T0, "Programmed": T1}


def test_other_writers_conditions_stay_and_removed_addresses_are_nulled():
    current = {"conditions": [cond("Accepted"), cond("example.com/Healthy")],
               "addresses": [{"type": "IPAddress", "value": "10.0.0.9"}]}
    ours = {"conditions": [cond("Accepted", "False", "Invalid")], "listeners": []}
    patch = status_patch("Gateway", current, ours, 1, now=lambda: T0)
    assert [c["type"] for c in patch["conditions"]] == ["example.com/Healthy", "Accepted"]
    assert patch["addresses"] is None and patch.get("listeners") is None


def test_route_parents_of_other_controllers_are_kept():
    other = {"parentRef": {"name": "theirs"}, "controllerName": "example.com/gateway",
             "conditions": [{**cond("Accepted"), "lastTransitionTime": T0}]}
    stale = {"parentRef": {"name": "gone"}, "controllerName": GATEWAY_API_CONTROLLER, "conditions": []}
    ours = {"parents": [{"parentRef": {"name": "gw", "sectionName": "http"}, "controllerName": GATEWAY_API_CONTROLLER,
                         "conditions": [cond("Accepted"), cond("ResolvedRefs", "False", "BackendNotFound")]}]}
    patch = status_patch("HTTPRoute", {"parents": [other, stale]}, ours, 2, now=lambda: T0)
    assert [p["parentRef"]["name"] for p in patch["parents"]] == ["theirs", "gw"]
    assert patch["parents"][0] == other
    assert patch["parents"][1]["conditions"][1]["reason"] == "BackendNotFound"
    assert status_patch("HTTPRoute", patch, ours, 2, now=lambda: T1) is None


def test_a_rejected_object_says_why_in_the_specs_terms():
    patch = status_patch("Gateway", {}, GATEWAY, 2, "spec.listeners[0].port: must be >= 1", now=lambda: T0)
    accepted = next(c for c in patch["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert rejected_message("Gateway", patch) == "spec.listeners[0].port: must be >= 1"
    route = {"parents": [{"parentRef": {"name": "gw"}, "conditions": [cond("Accepted"), cond("ResolvedRefs")]}]}
    patch = status_patch("HTTPRoute", {}, route, 2, "spec.rules[0]: bad", now=lambda: T0)
    assert patch["parents"][0]["conditions"][0]["reason"] == "UnsupportedValue"
    assert rejected_message("HTTPRoute", patch) == "spec.rules[0]: bad"
    assert rejected_message("HTTPRoute", status_patch("HTTPRoute", {}, route, 2, now=lambda: T0)) is None


# --- the status writer (kube/status.py) with the model's Gateway API status --------------


class RecordingApi:
    """KubeApi's `call`, answering a status PATCH with the object as the API server would."""

    def __init__(self):
        self.patches: list[tuple[str, dict]] = []

    async def call(self, method, path, body=None, **_):
        self.patches.append((path, body))
        return {"metadata": {"resourceVersion": str(len(self.patches) + 100)}, "status": body["status"]}


def _resource(kind: kinds.Kind):
    return next(r for r in RESOURCES if r.kind is kind)


def test_the_writer_writes_the_models_status_and_removes_parents_no_longer_meshds():
    async def run():
        api = RecordingApi()
        writer = StatusWriter(api, retry_after=0.01)
        route = _resource(kinds.HTTP_ROUTE)
        mine = {"parentRef": {"name": "gw"}, "controllerName": GATEWAY_API_CONTROLLER,
                "conditions": [{**cond("Accepted"), "lastTransitionTime": T0, "observedGeneration": 1}]}
        theirs = {"parentRef": {"name": "x"}, "controllerName": "example.com/gw", "conditions": []}
        info = ObjectInfo("gateway.networking.k8s.io/v1", "shop", "r", "uid", 2, "7", {"parents": [mine, theirs]})
        writer.put("s", route, "loc", object(), info)
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0.05)
        assert api.patches == []  # nothing before the model says what the status is
        # the model's next snapshot: the route has no parent of meshd's any more
        writer.gateway_api_status({ConfigKey("KubernetesGateway", "shop", "gw"): {"conditions": []}})
        for _ in range(100):
            if api.patches:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        [(path, body)] = api.patches
        assert path == "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r/status"
        assert body == {"metadata": {"resourceVersion": "7"}, "status": {"parents": [theirs]}}
        # a Gateway the model has no status for (another controller's class): never written
        gateway = _resource(kinds.K8S_GATEWAY)
        writer.put("g", gateway, "gw-loc", object(), ObjectInfo("gateway.networking.k8s.io/v1", "shop", "other", "u", 1,
                                                                "9", {"conditions": [cond("Accepted")]}))
        assert "gw-loc" not in writer._dirty
    asyncio.run(run())


def test_a_new_generation_waits_for_the_model_and_another_writers_change_is_put_right():
    async def run():
        api = RecordingApi()
        writer = StatusWriter(api, retry_after=0.01)
        route = _resource(kinds.HTTP_ROUTE)
        ours = {"parents": [{"parentRef": {"name": "gw"}, "controllerName": GATEWAY_API_CONTROLLER,
                             "conditions": [cond("Accepted")]}]}
        writer.gateway_api_status({ConfigKey("HTTPRoute", "shop", "r"): ours})
        written = status_patch("HTTPRoute", {}, ours, 1, now=lambda: T0)
        info = ObjectInfo("gateway.networking.k8s.io/v1", "shop", "r", "uid", 1, "7", written)
        writer.put("s", route, "loc", object(), info)
        assert not writer._dirty  # the cluster already says it
        # generation 2: not written with the last snapshot's verdict
        writer.put("s", route, "loc", object(), ObjectInfo("gateway.networking.k8s.io/v1", "shop", "r", "uid", 2, "8",
                                                           written))
        assert not writer._dirty
        # another writer dropped meshd's parent (same generation): put right
        writer.put("s", route, "loc", object(), ObjectInfo("gateway.networking.k8s.io/v1", "shop", "r", "uid", 2, "9",
                                                           {}))
        assert writer._dirty == {"loc"}
    asyncio.run(run())
