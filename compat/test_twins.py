"""Twins through the device SDK (MQTT/TLS) and the service SDK (REST): AZURE-COMPAT §1.3, §3, §4."""

from __future__ import annotations

import queue

import pytest
from azure.iot.hub.models import Twin, TwinProperties

from harness import run_with_timeout, set_handler, wait_for

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups(),  # SQLite, PostgreSQL, three replicas behind HAProxy (conftest.py)
]


def make_device(registry, device_id="dev1"):
    d = registry.create_device_with_sas(device_id, "", "", "enabled")
    return d.authentication.symmetric_key.primary_key


def make_module(registry, device_id="dev1", module_id="mod1"):
    registry.create_device_with_sas(device_id, "", "", "enabled")
    m = registry.create_module_with_sas(device_id, module_id, None, "", "")
    return m.authentication.symmetric_key.primary_key


def desired_patch(props: dict) -> Twin:
    return Twin(properties=TwinProperties(desired=props))


def test_device_get_twin_has_desired_and_reported_versions(hub, registry, clients):
    key = make_device(registry)
    registry.update_twin("dev1", desired_patch({"threshold": 25}), "*")
    client = clients.open(hub, "dev1", key)

    twin = run_with_timeout(client.get_twin, 15, "get_twin")

    assert isinstance(twin["desired"]["$version"], int)
    assert isinstance(twin["reported"]["$version"], int)
    assert twin["desired"]["threshold"] == 25
    assert "tags" not in twin, "tags are never sent to devices"
    service = registry.get_twin("dev1")
    assert twin["desired"]["$version"] == service.properties.desired["$version"]


def test_reported_patch_from_device_shows_in_service_twin(hub, registry, clients):
    key = make_device(registry)
    client = clients.open(hub, "dev1", key)
    before = registry.get_twin("dev1")

    run_with_timeout(lambda: client.patch_twin_reported_properties(
        {"status": "ok", "nested": {"a": 1, "b": "x"}, "gone": None}), 15, "patch_twin_reported_properties")

    after = registry.get_twin("dev1")
    reported = after.properties.reported
    assert reported["status"] == "ok"
    assert reported["nested"] == {"a": 1, "b": "x"}
    assert "gone" not in reported
    assert reported["$version"] == before.properties.reported["$version"] + 1
    assert "$metadata" in reported
    assert after.etag != before.etag, "a reported change must change the twin etag"

    # null deletes, nested objects merge (AZURE-COMPAT §3.2)
    run_with_timeout(lambda: client.patch_twin_reported_properties({"status": None, "nested": {"b": None, "c": 2}}),
                     15, "second reported patch")
    reported = registry.get_twin("dev1").properties.reported
    assert "status" not in reported
    assert reported["nested"] == {"a": 1, "c": 2}
    device_view = run_with_timeout(client.get_twin, 15, "get_twin")
    assert device_view["reported"]["nested"] == {"a": 1, "c": 2}
    assert device_view["reported"]["$version"] == reported["$version"]


def test_service_desired_patch_reaches_device_handler_with_version(hub, registry, clients):
    key = make_device(registry)
    client = clients.open(hub, "dev1", key)
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)

    updated = registry.update_twin("dev1", desired_patch({"threshold": 30, "mode": {"fast": True}}), "*")

    patch = patches.get(timeout=10)
    assert patch["threshold"] == 30
    assert patch["mode"] == {"fast": True}
    assert patch["$version"] == updated.properties.desired["$version"]
    assert updated.properties.desired["threshold"] == 30, "PATCH /twins answers the full updated twin"

    # a delete is notified as null, and the next patch has the next version
    updated2 = registry.update_twin("dev1", desired_patch({"threshold": None}), updated.etag)
    patch2 = patches.get(timeout=10)
    assert "threshold" in patch2 and patch2["threshold"] is None
    assert patch2["$version"] == updated2.properties.desired["$version"] == patch["$version"] + 1
    assert "threshold" not in registry.get_twin("dev1").properties.desired


def test_twin_update_with_stale_etag_is_refused_and_tags_merge(hub, registry):
    make_device(registry)
    first = registry.update_twin("dev1", Twin(tags={"env": "test", "site": {"a": 1}}), "*")
    assert first.tags == {"env": "test", "site": {"a": 1}}

    second = registry.update_twin("dev1", Twin(tags={"site": {"b": 2}}), first.etag)
    assert second.tags == {"env": "test", "site": {"a": 1, "b": 2}}
    assert second.etag != first.etag

    from msrest.exceptions import HttpOperationError
    with pytest.raises(HttpOperationError) as e:
        registry.update_twin("dev1", desired_patch({"x": 1}), first.etag)
    assert e.value.response.status_code == 412
    now = registry.get_twin("dev1")
    assert "x" not in now.properties.desired
    assert now.etag == second.etag


def test_replace_twin_replaces_desired_and_tags(hub, registry, clients):
    key = make_device(registry)
    registry.update_twin("dev1", Twin(tags={"old": 1}, properties=TwinProperties(desired={"a": 1, "b": 2})), "*")
    client = clients.open(hub, "dev1", key)
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)

    replaced = registry.replace_twin("dev1", Twin(tags={"new": 2}, properties=TwinProperties(desired={"c": 3})))

    assert replaced.tags == {"new": 2}
    desired = {k: v for k, v in replaced.properties.desired.items() if not k.startswith("$")}
    assert desired == {"c": 3}
    patch = patches.get(timeout=10)
    assert patch["c"] == 3
    assert patch["$version"] == replaced.properties.desired["$version"]


def test_module_twin_round_trip(hub, registry, clients):
    key = make_module(registry)
    client = clients.open(hub, "dev1", key, module_id="mod1")
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)

    updated = registry.update_module_twin("dev1", "mod1", desired_patch({"interval": 5}), "*")
    patch = patches.get(timeout=10)
    assert patch == {"interval": 5, "$version": updated.properties.desired["$version"]}

    run_with_timeout(lambda: client.patch_twin_reported_properties({"interval": 5}), 15, "module reported patch")
    twin = registry.get_module_twin("dev1", "mod1")
    assert twin.module_id == "mod1"
    assert twin.device_id == "dev1"
    assert twin.properties.reported["interval"] == 5
    module_view = run_with_timeout(client.get_twin, 15, "module get_twin")
    assert module_view["desired"]["interval"] == 5
    # the device twin is a different document
    assert "interval" not in registry.get_twin("dev1").properties.desired


def test_desired_patch_for_one_device_does_not_reach_another(hub, registry, clients):
    key1 = make_device(registry, "dev1")
    key2 = make_device(registry, "dev2")
    c1 = clients.open(hub, "dev1", key1)
    c2 = clients.open(hub, "dev2", key2)
    p1: queue.Queue = queue.Queue()
    p2: queue.Queue = queue.Queue()
    set_handler(c1, "on_twin_desired_properties_patch_received", p1.put)
    set_handler(c2, "on_twin_desired_properties_patch_received", p2.put)

    registry.update_twin("dev2", desired_patch({"only": "dev2"}), "*")

    assert p2.get(timeout=10)["only"] == "dev2"
    with pytest.raises(queue.Empty):
        p1.get(timeout=1.5)


def test_desired_change_while_offline_reaches_device_on_reconnect(hub, registry, clients):
    # After a reconnect the SDK GETs the twin without ever having subscribed to $iothub/twin/res/#
    # (AZURE-COMPAT §1.1): the hub must answer anyway, and the SDK turns the newer desired into a patch.
    key = make_device(registry)
    client = clients.open(hub, "dev1", key)
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    run_with_timeout(client.disconnect, 15, "disconnect")

    updated = registry.update_twin("dev1", desired_patch({"offline": 1}), "*")
    run_with_timeout(client.connect, 20, "reconnect")

    patch = patches.get(timeout=10)
    assert patch["offline"] == 1
    assert patch["$version"] == updated.properties.desired["$version"]


def test_twin_and_device_show_connection_state(hub, registry, clients):
    key = make_device(registry)
    assert registry.get_twin("dev1").connection_state == "Disconnected"
    client = clients.open(hub, "dev1", key)
    assert registry.get_twin("dev1").connection_state == "Connected"
    assert registry.get_device("dev1").connection_state == "Connected"
    run_with_timeout(client.disconnect, 15, "disconnect")
    wait_for(lambda: registry.get_device("dev1").connection_state == "Disconnected", 5,
             "connectionState to become Disconnected")


def test_desired_metadata_tracks_versions(hub, registry):
    make_device(registry)
    first = registry.update_twin("dev1", desired_patch({"a": 1, "obj": {"x": 1}}), "*")
    v1 = first.properties.desired["$version"]
    second = registry.update_twin("dev1", desired_patch({"b": 2}), "*")
    desired = second.properties.desired
    meta = desired["$metadata"]
    assert meta["$lastUpdated"], "every node carries $lastUpdated"
    assert meta["$lastUpdatedVersion"] == desired["$version"] == v1 + 1
    assert meta["a"]["$lastUpdatedVersion"] == v1, "a key keeps the version that last changed it"
    assert meta["b"]["$lastUpdatedVersion"] == v1 + 1
    assert meta["obj"]["x"]["$lastUpdatedVersion"] == v1
    assert "$lastUpdated" in second.properties.reported["$metadata"]


def test_twin_of_missing_device_is_404(hub, registry):
    from msrest.exceptions import HttpOperationError

    for call in (lambda: registry.get_twin("nobody"),
                 lambda: registry.update_twin("nobody", desired_patch({"a": 1}), "*"),
                 lambda: registry.get_module_twin("nobody", "m1")):
        with pytest.raises(HttpOperationError) as e:
            call()
        assert e.value.response.status_code == 404


def test_module_twin_etags_and_replace(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.create_module_with_sas("dev1", "m1", None, "", "")
    first = registry.update_module_twin("dev1", "m1", desired_patch({"a": 1}), "*")
    second = registry.update_module_twin("dev1", "m1", desired_patch({"b": 2}), first.etag)
    from msrest.exceptions import HttpOperationError
    with pytest.raises(HttpOperationError) as e:
        registry.update_module_twin("dev1", "m1", desired_patch({"c": 3}), first.etag)
    assert e.value.response.status_code == 412
    replaced = registry.replace_module_twin("dev1", "m1", Twin(tags={"t": 1}, properties=TwinProperties(desired={"z": 9})),
                                            second.etag)
    assert {k: v for k, v in replaced.properties.desired.items() if not k.startswith("$")} == {"z": 9}
    assert replaced.tags == {"t": 1}
    assert replaced.properties.desired["$version"] == second.properties.desired["$version"] + 1


def test_null_tag_deletes_it_and_twin_version_counts_changes(hub, registry):
    make_device(registry)
    t0 = registry.get_twin("dev1")
    t1 = registry.update_twin("dev1", Twin(tags={"a": 1, "b": 2}), "*")
    t2 = registry.update_twin("dev1", Twin(tags={"a": None}), "*")
    assert t2.tags == {"b": 2}
    assert t0.version < t1.version < t2.version, "the twin version grows with every change"
