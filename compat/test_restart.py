"""The hub keeps everything across a restart of its process, graceful or kill -9, and persisted MQTT
sessions (CleanSession=0) keep their subscriptions: the SDK reconnects without re-subscribing."""

from __future__ import annotations

import queue
import time

import pytest
from azure.iot.device import Message, MethodResponse
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

from harness import Monitor, monitor_body, run_with_timeout, set_handler, wait_for

pytestmark = pytest.mark.docker_free  # the real SDKs and the outpost binary only: no Docker


def populate(hub, registry, clients):
    """Creates devices, modules, keys, twins with tags/desired/reported; returns what the hub must keep."""
    dev = registry.create_device_with_sas("dev1", "", "", "enabled")
    edge = registry.create_device_with_sas("edge1", "", "", "enabled", iot_edge=True)
    registry.create_module_with_sas("dev1", "mod1", None, "", "")
    registry.update_twin("dev1", Twin(tags={"site": "lab"}, properties=TwinProperties(desired={"threshold": 30})), "*")
    registry.update_module_twin("dev1", "mod1", Twin(properties=TwinProperties(desired={"interval": 5})), "*")
    client = clients.open(hub, "dev1", dev.authentication.symmetric_key.primary_key)
    run_with_timeout(lambda: client.patch_twin_reported_properties({"fw": "1.2.3", "nested": {"a": 1}}), 15,
                     "reported patch")
    run_with_timeout(client.shutdown, 15, "client shutdown")
    return {
        "dev": registry.get_device("dev1"),
        "edge": registry.get_device("edge1"),
        "mod": registry.get_module("dev1", "mod1"),
        "twin": registry.get_twin("dev1"),
        "mod_twin": registry.get_module_twin("dev1", "mod1"),
        "connection_string": hub.connection_string,
        "ca": hub.ca_pem,
        "edge_generation": edge.generation_id,
    }


def assert_intact(hub, registry, clients, kept):
    assert hub.connection_string == kept["connection_string"], "the service key must survive a restart"
    assert hub.ca_pem == kept["ca"], "the hub must keep its CA"
    for key in ("dev", "edge"):
        got = registry.get_device(kept[key].device_id)
        want = kept[key]
        assert got.authentication.symmetric_key.primary_key == want.authentication.symmetric_key.primary_key
        assert got.authentication.symmetric_key.secondary_key == want.authentication.symmetric_key.secondary_key
        assert got.generation_id == want.generation_id
        assert got.etag == want.etag
        assert bool(got.capabilities.iot_edge) == bool(want.capabilities.iot_edge)
    mod = registry.get_module("dev1", "mod1")
    assert mod.authentication.symmetric_key.primary_key == kept["mod"].authentication.symmetric_key.primary_key

    twin = registry.get_twin("dev1")
    assert twin.tags == {"site": "lab"}
    assert twin.properties.desired["threshold"] == 30
    assert twin.properties.reported["fw"] == "1.2.3"
    assert twin.properties.reported["nested"] == {"a": 1}
    assert twin.properties.desired["$version"] == kept["twin"].properties.desired["$version"]
    assert twin.properties.reported["$version"] == kept["twin"].properties.reported["$version"]
    assert twin.etag == kept["twin"].etag
    mod_twin = registry.get_module_twin("dev1", "mod1")
    assert mod_twin.properties.desired["interval"] == 5
    assert mod_twin.properties.desired["$version"] == kept["mod_twin"].properties.desired["$version"]

    # the device can still connect with its key and the CA it was given before the restart
    client = clients.open(hub, "dev1", kept["dev"].authentication.symmetric_key.primary_key)
    device_view = run_with_timeout(client.get_twin, 15, "get_twin after restart")
    assert device_view["desired"]["threshold"] == 30
    assert device_view["reported"]["fw"] == "1.2.3"


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_registry_and_twins_survive_a_restart(hub, registry, clients, hard):
    kept = populate(hub, registry, clients)

    hub.restart(hard=hard)

    assert_intact(hub, hub.registry(), clients, kept)


def test_queued_cloud_to_device_message_survives_kill_9(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    received: queue.Queue = queue.Queue()
    set_handler(client, "on_message_received", received.put)
    run_with_timeout(client.disconnect, 15, "disconnect")

    # `message send` exiting 0 means the hub accepted (durably queued) the message
    hub.run_cli(["message", "send", "dev1", "kept across a crash", "--property", "k=v"])
    hub.restart(hard=True)

    run_with_timeout(client.connect, 20, "reconnect after the crash")
    msg = received.get(timeout=10)
    assert msg.data == b"kept across a crash"
    assert msg.custom_properties.get("k") == "v"


def test_acknowledged_telemetry_survives_kill_9(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    # PUBACK means durable (DESIGN: fsync before the acknowledgement), so these survive a crash right after.
    for i in range(3):
        run_with_timeout(lambda i=i: client.send_message(Message(f"durable-{i}", message_id=f"d{i}")), 15,
                         "send_message")
    hub.restart(hard=True)

    monitor = Monitor(hub, count=3, timeout=10, from_start=True)
    try:
        got = monitor.messages()
    finally:
        monitor.close()
    assert [monitor_body(m) for m in got] == [b"durable-0", b"durable-1", b"durable-2"]
    assert [m["systemProperties"]["messageId"] for m in got] == ["d0", "d1", "d2"]


def reconnected_after_restart(hub, client):
    """Restarts the hub and waits until the SDK has seen the connection drop and come back by itself."""
    states: list[bool] = []
    client.on_connection_state_change = lambda: states.append(client.connected)
    hub.restart()
    wait_for(lambda: False in states and states[-1] is True and client.connected, 30,
             "the SDK to reconnect after the hub restarted")
    client.on_connection_state_change = None


def test_persistent_session_receives_desired_patches_after_hub_restart(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key, connection_retry=True, connection_retry_interval=2)
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)
    registry.update_twin("dev1", Twin(properties=TwinProperties(desired={"before": 1})), "*")
    assert patches.get(timeout=10)["before"] == 1

    reconnected_after_restart(hub, client)
    # After reconnecting, the SDK GETs the twin itself; let that finish so that what follows can only come
    # from the persisted $iothub/twin/PATCH/properties/desired/# subscription (the SDK does not re-subscribe).
    time.sleep(1.5)
    assert patches.empty(), "the desired version did not change, so the SDK has nothing to synthesise"

    updated = hub.registry().update_twin("dev1", Twin(properties=TwinProperties(desired={"after": 2})), "*")

    patch = patches.get(timeout=15)
    assert patch == {"after": 2, "$version": updated.properties.desired["$version"]}, (
        "expected the hub's patch notification (a synthesised full twin would carry 'before' too)")


def test_persistent_session_keeps_method_subscription_after_hub_restart(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key, connection_retry=True, connection_retry_interval=2)

    def handler(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": True}))

    set_handler(client, "on_method_request_received", handler)

    reconnected_after_restart(hub, client)

    result = hub.registry().invoke_device_method("dev1", CloudToDeviceMethod(
        method_name="ping", response_timeout_in_seconds=10))
    assert result.status == 200
    assert result.payload == {"ok": True}
