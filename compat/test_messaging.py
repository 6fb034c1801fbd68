"""Device-to-cloud telemetry, module outputs (read back with `outpost monitor`) and cloud-to-device
messages (sent with `outpost message send`): AZURE-COMPAT §1.3-1.5."""

from __future__ import annotations

import pytest

import queue

from azure.iot.device import Message

from harness import Monitor, monitor_body, run_with_timeout, set_handler

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups(),  # SQLite, PostgreSQL, three replicas behind HAProxy (conftest.py)
]


def make_device(registry, device_id="dev1"):
    return registry.create_device_with_sas(device_id, "", "", "enabled").authentication.symmetric_key.primary_key


def test_telemetry_with_properties_reaches_monitor(hub, registry, clients):
    key = make_device(registry)
    client = clients.open(hub, "dev1", key)
    monitor = Monitor(hub, count=3)
    try:
        msg = Message('{"temp": 21}', message_id="mid-1", content_type="application/json",
                      content_encoding="utf-8")
        msg.correlation_id = "corr-1"
        msg.expiry_time_utc = "2030-01-01T00:00:00+00:00"
        msg.custom_properties = {"alert": "true", "sp ace": "a b&c=d/e", "plus": "1+1"}
        run_with_timeout(lambda: client.send_message(msg), 15, "send_message")
        run_with_timeout(lambda: client.send_message("plain telemetry"), 15, "send_message (plain)")
        run_with_timeout(lambda: client.send_message(Message(b"\xff\xfe\x00binary")), 15, "send_message (binary)")
        got = monitor.messages()
    finally:
        monitor.close()

    first, second, third = got
    assert first["deviceId"] == "dev1"
    assert first.get("moduleId") is None
    assert first["properties"] == {"alert": "true", "sp ace": "a b&c=d/e", "plus": "1+1"}
    system = first["systemProperties"]
    assert system["messageId"] == "mid-1"
    assert system["correlationId"] == "corr-1"
    assert system["contentType"] == "application/json"
    assert system["contentEncoding"] == "utf-8"
    assert system["absolute-expiry-time"] == "2030-01-01T00:00:00+00:00"
    assert monitor_body(first) == b'{"temp": 21}'
    assert first.get("enqueuedTime"), "each event carries enqueuedTime"

    assert monitor_body(second) == b"plain telemetry"
    assert second["properties"] == {}
    assert "messageId" not in second["systemProperties"]

    assert third.get("bodyBase64") is not None, "a body that is not UTF-8 is given as bodyBase64"
    assert monitor_body(third) == b"\xff\xfe\x00binary"


def test_module_output_reaches_monitor_with_output_name(hub, registry, clients):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    key = registry.create_module_with_sas("dev1", "mod1", None, "", "").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key, module_id="mod1")
    monitor = Monitor(hub, count=2)
    try:
        msg = Message('{"temp": 20}', message_id="mid-2", content_type="application/json",
                      content_encoding="utf-8")
        msg.custom_properties = {"k": "v"}
        run_with_timeout(lambda: client.send_message_to_output(msg, "output1"), 15, "send_message_to_output")
        run_with_timeout(lambda: client.send_message("module telemetry"), 15, "module send_message")
        got = monitor.messages()
    finally:
        monitor.close()

    out, tel = got
    assert (out["deviceId"], out["moduleId"]) == ("dev1", "mod1")
    assert out["systemProperties"]["outputName"] == "output1"
    assert out["systemProperties"]["messageId"] == "mid-2"
    assert out["properties"] == {"k": "v"}
    assert monitor_body(out) == b'{"temp": 20}'
    assert (tel["deviceId"], tel["moduleId"]) == ("dev1", "mod1")
    assert "outputName" not in tel["systemProperties"]
    assert monitor_body(tel) == b"module telemetry"


def test_messages_keep_their_order(hub, registry, clients):
    key = make_device(registry)
    client = clients.open(hub, "dev1", key)
    monitor = Monitor(hub, count=20)
    try:
        for i in range(20):
            run_with_timeout(lambda i=i: client.send_message(Message(f"m{i}", message_id=str(i))), 15, "send")
        got = monitor.messages()
    finally:
        monitor.close()
    assert [monitor_body(m) for m in got] == [f"m{i}".encode() for i in range(20)]


def test_cloud_to_device_message_reaches_handler_with_properties(hub, registry, clients):
    key = make_device(registry)
    client = clients.open(hub, "dev1", key)
    received: queue.Queue = queue.Queue()
    set_handler(client, "on_message_received", received.put)

    hub.run_cli(["message", "send", "dev1", "hello device", "--property", "k=v", "--property", "sp ace=a b&c"])

    msg = received.get(timeout=10)
    assert msg.data == b"hello device"
    assert msg.custom_properties.get("k") == "v"
    assert msg.custom_properties.get("sp ace") == "a b&c"


def test_cloud_to_device_message_for_another_device_is_not_delivered(hub, registry, clients):
    key1 = make_device(registry, "dev1")
    make_device(registry, "dev2")
    client = clients.open(hub, "dev1", key1)
    received: queue.Queue = queue.Queue()
    set_handler(client, "on_message_received", received.put)

    hub.run_cli(["message", "send", "dev2", "not for dev1"])
    hub.run_cli(["message", "send", "dev1", "for dev1"])

    assert received.get(timeout=10).data == b"for dev1"
    assert received.empty()


def test_cloud_to_device_message_sent_while_offline_is_delivered_on_connect(hub, registry, clients):
    key = make_device(registry)
    # connect once so the session (with its C2D subscription) exists, then go offline
    client = clients.open(hub, "dev1", key)
    received: queue.Queue = queue.Queue()
    set_handler(client, "on_message_received", received.put)
    run_with_timeout(client.disconnect, 15, "disconnect")

    hub.run_cli(["message", "send", "dev1", "queued while offline", "--property", "n=1"])

    run_with_timeout(client.connect, 20, "reconnect")
    msg = received.get(timeout=10)
    assert msg.data == b"queued while offline"
    assert msg.custom_properties.get("n") == "1"


def test_message_send_to_unknown_device_fails(hub):
    cp = hub.run_cli(["message", "send", "nobody", "x"], check=False)
    assert cp.returncode != 0
    assert cp.stderr.strip(), "a failing command says why on stderr"


def test_cloud_to_device_queue_is_limited_to_50_pending(hub, registry):
    make_device(registry)
    for i in range(50):
        hub.run_cli(["message", "send", "dev1", f"c2d-{i}"])
    cp = hub.run_cli(["message", "send", "dev1", "one too many"], check=False)
    assert cp.returncode != 0, "IoT Hub keeps at most 50 pending cloud-to-device messages per device"
    assert cp.stderr.strip()


def test_cloud_to_device_message_over_64kb_is_refused(hub, registry, clients):
    key = make_device(registry)
    client = clients.open(hub, "dev1", key)
    received: queue.Queue = queue.Queue()
    set_handler(client, "on_message_received", received.put)
    cp = hub.run_cli(["message", "send", "dev1", "x" * (64 * 1024 + 1)], check=False)
    assert cp.returncode != 0
    hub.run_cli(["message", "send", "dev1", "y" * (60 * 1024)])
    assert received.get(timeout=10).data == b"y" * (60 * 1024)
    assert received.empty()
