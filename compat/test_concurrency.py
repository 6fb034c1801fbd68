"""Many devices at once, and many operations in flight on one connection: nothing lost, nothing reordered."""

from __future__ import annotations

import threading

import pytest
from azure.iot.device import Message

from harness import Monitor, monitor_body

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups(),  # SQLite, PostgreSQL, three replicas behind HAProxy (conftest.py)
]


def test_pipelined_reported_patches_apply_in_order(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    start = registry.get_twin("dev1").properties.reported["$version"]
    errors: list[BaseException] = []

    def patch(i: int) -> None:
        try:
            client.patch_twin_reported_properties({"n": i, f"k{i}": i})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    # several patches in flight at once on one connection (the SDK sends each as its own QoS 1 PUBLISH)
    threads = [threading.Thread(target=patch, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    reported = registry.get_twin("dev1").properties.reported
    assert reported["$version"] == start + 20
    assert all(reported[f"k{i}"] == i for i in range(20))


def test_many_devices_at_once(hub, registry, clients):
    n_devices, n_messages = 10, 5
    keys = {f"d{i}": registry.create_device_with_sas(f"d{i}", "", "", "enabled").authentication.symmetric_key.primary_key
            for i in range(n_devices)}
    monitor = Monitor(hub, count=n_devices * n_messages, timeout=40)
    errors: list[BaseException] = []

    def run(device_id: str, key: str) -> None:
        try:
            client = clients.open(hub, device_id, key)
            for j in range(n_messages):
                client.send_message(Message(f"{device_id}-{j}"))
            client.patch_twin_reported_properties({"done": True})
            assert client.get_twin()["reported"]["done"] is True
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    try:
        threads = [threading.Thread(target=run, args=item) for item in keys.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not errors, errors
        got = monitor.messages()
    finally:
        monitor.close()
    per_device: dict[str, list[bytes]] = {}
    for m in got:
        per_device.setdefault(m["deviceId"], []).append(monitor_body(m))
    assert per_device == {d: [f"{d}-{j}".encode() for j in range(n_messages)] for d in keys}
    for device_id in keys:
        assert registry.get_twin(device_id).properties.reported["done"] is True
    assert sorted(d.device_id for d in registry.get_devices()) == sorted(keys)
    assert all(registry.get_device(d).connection_state == "Connected" for d in keys)
