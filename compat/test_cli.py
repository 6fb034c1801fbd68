"""The operator CLI (`outpost device|module|twin|method|monitor ...`) against a running hub, cross-checked
with the official SDKs."""

from __future__ import annotations

import json
import os
import subprocess
import threading

from azure.iot.device import Message, MethodResponse
from msrest.exceptions import HttpOperationError
import pytest

from harness import Monitor, connection_string_fields, monitor_body, outpost_bin, run_with_timeout, set_handler

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups(),  # SQLite, PostgreSQL, three replicas behind HAProxy (conftest.py)
]


def test_hub_prints_its_connection_string_on_first_start(hub):
    fields = connection_string_fields(hub.connection_string)
    assert fields["HostName"] == f"{hub.host}:{hub.https_port}", "the port is included when it is not 443"
    assert fields["SharedAccessKeyName"] == "iothubowner"
    assert fields["SharedAccessKey"]
    assert hub.connection_string in hub.log_text(), "first start prints the service connection string"


def test_device_round_trip_with_json_output(hub, registry, clients):
    created = hub.cli_json("device", "create", "cli-dev")
    assert created["deviceId"] == "cli-dev"
    primary = created["authentication"]["symmetricKey"]["primaryKey"]
    assert primary

    # what the CLI created, the service SDK sees
    assert registry.get_device("cli-dev").authentication.symmetric_key.primary_key == primary

    listed = hub.cli_json("device", "list")
    assert [d["deviceId"] for d in listed] == ["cli-dev"]

    shown = hub.cli_json("device", "show", "cli-dev")
    assert shown["deviceId"] == "cli-dev"
    assert shown["authentication"]["symmetricKey"]["primaryKey"] == primary

    cs = hub.run_cli(["device", "connection-string", "cli-dev"]).stdout.strip()
    assert connection_string_fields(cs) == {"HostName": hub.host, "DeviceId": "cli-dev", "SharedAccessKey": primary}
    # and the official device SDK connects with it as printed
    from azure.iot.device import IoTHubDeviceClient
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=hub.ca_pem,
                                                              connection_retry=False)
    clients.created.append(client)
    run_with_timeout(client.connect, 20, "connect with the printed connection string")

    hub.run_cli(["device", "delete", "cli-dev"])
    with pytest.raises(HttpOperationError) as e:
        registry.get_device("cli-dev")
    assert e.value.response.status_code == 404
    assert hub.cli_json("device", "list") == []


def test_edge_device_and_modules_from_cli(hub, registry):
    created = hub.cli_json("device", "create", "edge1", "--edge")
    assert created["capabilities"]["iotEdge"] is True
    assert registry.get_device("edge1").capabilities.iot_edge is True

    module = hub.cli_json("module", "create", "edge1", "filter")
    assert module["moduleId"] == "filter"
    assert module["deviceId"] == "edge1"
    key = module["authentication"]["symmetricKey"]["primaryKey"]
    assert registry.get_module("edge1", "filter").authentication.symmetric_key.primary_key == key

    ids = {m["moduleId"] for m in hub.cli_json("module", "list", "edge1")}
    assert "filter" in ids
    assert hub.cli_json("module", "show", "edge1", "filter")["moduleId"] == "filter"
    cs = hub.run_cli(["module", "connection-string", "edge1", "filter"]).stdout.strip()
    assert connection_string_fields(cs) == {
        "HostName": hub.host, "DeviceId": "edge1", "ModuleId": "filter", "SharedAccessKey": key}

    from azure.iot.device import IoTHubModuleClient
    client = IoTHubModuleClient.create_from_connection_string(cs, server_verification_cert=hub.ca_pem,
                                                              connection_retry=False)
    try:
        run_with_timeout(client.connect, 20, "module connect with the printed connection string")
        assert run_with_timeout(client.get_twin, 15, "module get_twin")["desired"]["$version"] >= 1
    finally:
        run_with_timeout(client.shutdown, 15, "module client shutdown")

    hub.run_cli(["module", "delete", "edge1", "filter"])
    assert "filter" not in {m.module_id for m in registry.get_modules("edge1")}


def test_cli_errors_exit_non_zero_with_a_message(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    for args in (["device", "show", "nobody"], ["device", "create", "dev1"], ["device", "create", "bad id"],
                 ["device", "delete", "nobody"], ["twin", "update", "dev1", "{not json"],
                 ["module", "create", "nobody", "m1"]):
        cp = hub.run_cli(args, check=False)
        assert cp.returncode != 0, f"`outpost {' '.join(args)}` exited 0"
        assert cp.stderr.strip(), f"`outpost {' '.join(args)}` gave no reason on stderr"
    assert [d["deviceId"] for d in hub.cli_json("device", "list")] == ["dev1"]


def test_cli_without_a_hub_configured_fails_clearly(hub):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_HUB")}
    cp = subprocess.run([str(outpost_bin()), "device", "list"], env=env, capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0
    assert cp.stderr.strip()


def test_cli_flags_select_the_hub(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_HUB")}
    cp = subprocess.run([str(outpost_bin()), "device", "list", "--hub", hub.connection_string,
                         "--ca", str(hub.ca_path), "--output", "json"],
                        env=env, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert [d["deviceId"] for d in json.loads(cp.stdout)] == ["dev1"]


def test_twin_show_and_update(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    run_with_timeout(lambda: client.patch_twin_reported_properties({"fw": "1.0"}), 15, "reported patch")

    twin = hub.cli_json("twin", "show", "dev1")
    assert twin["deviceId"] == "dev1"
    assert twin["properties"]["reported"]["fw"] == "1.0"
    version = twin["properties"]["desired"]["$version"]

    hub.run_cli(["twin", "update", "dev1", json.dumps({"properties": {"desired": {"threshold": 30}},
                                                         "tags": {"site": "lab"}})])

    service = registry.get_twin("dev1")
    assert service.properties.desired["threshold"] == 30
    assert service.properties.desired["$version"] == version + 1
    assert service.tags == {"site": "lab"}
    assert run_with_timeout(client.get_twin, 15, "get_twin")["desired"]["threshold"] == 30


def test_module_twin_show_and_update(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.create_module_with_sas("dev1", "m1", None, "", "")
    hub.run_cli(["twin", "update", "dev1", "--module", "m1", '{"properties":{"desired":{"interval":5}}}'])
    shown = hub.cli_json("twin", "show", "dev1", "--module", "m1")
    assert shown["moduleId"] == "m1"
    assert shown["properties"]["desired"]["interval"] == 5
    assert registry.get_module_twin("dev1", "m1").properties.desired["interval"] == 5
    assert "interval" not in registry.get_twin("dev1").properties.desired


def test_method_invoke_reaches_a_python_device(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)

    def handler(request):
        client.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"got": request.payload, "name": request.name}))

    set_handler(client, "on_method_request_received", handler)

    result = hub.cli_json("method", "invoke", "dev1", "reboot", "--payload", '{"delay": 3}', "--timeout", "10")
    assert result["status"] == 200
    assert result["payload"] == {"got": {"delay": 3}, "name": "reboot"}


def test_method_invoke_reaches_a_python_module(hub, registry, clients):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    key = registry.create_module_with_sas("dev1", "m1", None, "", "").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key, module_id="m1")

    def handler(request):
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, "pong"))

    set_handler(client, "on_method_request_received", handler)
    result = hub.cli_json("method", "invoke", "dev1", "--module", "m1", "ping")
    assert result == {"status": 200, "payload": "pong"}


def test_method_invoke_on_offline_device_fails(hub, registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    cp = hub.run_cli(["method", "invoke", "dev1", "ping", "--timeout", "5"], check=False, timeout=20)
    assert cp.returncode != 0
    assert cp.stderr.strip()


def test_monitor_prints_json_lines_and_stops_after_count(hub, registry, clients):
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    monitor = Monitor(hub, count=2, timeout=20)
    try:
        for i in range(2):
            msg = Message(json.dumps({"i": i}), content_type="application/json", content_encoding="utf-8")
            msg.custom_properties["n"] = str(i)
            run_with_timeout(lambda msg=msg: client.send_message(msg), 15, "send_message")
        got = monitor.messages()
    finally:
        monitor.close()
    for i, m in enumerate(got):
        assert set(m) >= {"deviceId", "properties", "systemProperties", "enqueuedTime"}
        assert m["deviceId"] == "dev1"
        assert m["properties"] == {"n": str(i)}
        assert json.loads(monitor_body(m)) == {"i": i}


def test_monitor_filters_by_module_and_reads_from_the_start(hub, registry, clients):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    senders = {}
    for module in ("noisy", "wanted"):
        key = registry.create_module_with_sas("dev1", module, None, "", "").authentication.symmetric_key.primary_key
        senders[module] = clients.open(hub, "dev1", key, module_id=module)
    for i in range(3):
        for module, client in senders.items():
            msg = Message(json.dumps({"module": module, "i": i}))
            run_with_timeout(lambda c=client, m=msg: c.send_message(m), 15, "send_message")
    # Everything was sent before the monitor started: --from-start reads it back, --module keeps one sender's.
    got = Monitor(hub, count=3, timeout=20, from_start=True, extra=("--module", "wanted")).messages()
    assert [(m["moduleId"], json.loads(monitor_body(m))["i"]) for m in got] == [("wanted", i) for i in range(3)]


def test_monitor_timeout_ends_it_without_messages(hub):
    # run_cli fails the test if the monitor is still running after 15 s
    cp = hub.run_cli(["monitor", "--count", "1", "--timeout", "2"], check=False, timeout=15)
    assert cp.stdout.strip() == ""
    assert cp.returncode != 0, "running out of time before --count messages is a failure"


def test_monitor_shows_each_device_once(hub, registry, clients):
    k1 = registry.create_device_with_sas("a", "", "", "enabled").authentication.symmetric_key.primary_key
    k2 = registry.create_device_with_sas("b", "", "", "enabled").authentication.symmetric_key.primary_key
    c1, c2 = clients.open(hub, "a", k1), clients.open(hub, "b", k2)
    monitor = Monitor(hub, count=4)
    try:
        threads = [threading.Thread(target=lambda c=c, n=n: [c.send_message(f"{n}{i}") for i in range(2)])
                   for c, n in ((c1, "a"), (c2, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        got = monitor.messages()
    finally:
        monitor.close()
    by_device: dict[str, list[bytes]] = {}
    for m in got:
        by_device.setdefault(m["deviceId"], []).append(monitor_body(m))
    assert by_device == {"a": [b"a0", b"a1"], "b": [b"b0", b"b1"]}
