"""Certificates that renew themselves (issue 14, item 4): a hub and an edge hub whose server certificates live
for 20 s are renewed at 80 % of that life without a restart. Clients connected before a renewal keep working on
their open connection; new TLS connections verify against the CA and get a certificate with a new serial.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import ssl
import sys
import textwrap
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from azure.iot.hub.models import Twin

from edge_harness import Edge, deployment, wait_reported
from harness import API_VERSION, MQTT_PORT, Monitor, run_with_timeout, set_handler, wait_for

pytestmark = pytest.mark.docker_free  # the real SDKs and the outpost binary only: no Docker

LIFETIME_SECS = 20


def peer_certificate(host: str, port: int, ca_path: Path) -> dict:
    """Opens a new TLS connection that verifies the server against `ca_path`; returns the peer certificate."""
    context = ssl.create_default_context(cafile=str(ca_path))
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return tls.getpeercert()


def renewed(host: str, port: int, ca_path: Path, serial: str, timeout: float) -> dict:
    """Waits until a new connection sees a certificate whose serial is not `serial`."""
    return wait_for(lambda: (lambda c: c if c["serialNumber"] != serial else None)(
        peer_certificate(host, port, ca_path)), timeout, "a renewed server certificate", interval=1)


def read_events(hub) -> list[dict]:
    got = hub.rest_session().get(f"{hub.base_url}/events", params={"api-version": API_VERSION, "after": 0})
    assert got.status_code == 200, got.text
    return got.json()["events"]


def test_serve_help_documents_the_certificate_lifetimes(hub):
    out = hub.run_cli(["hub", "serve", "--help"], hub_env=False).stdout
    assert "--server-cert-lifetime" in out and "[default: 90d]" in out
    assert "--ca-lifetime" in out and "[default: 365d]" in out


def test_a_device_connected_before_the_hub_renews_its_certificate_keeps_working(hub, registry, clients):
    hub.extra_args = ["--server-cert-lifetime", f"{LIFETIME_SECS}s"]
    hub.restart()
    first = peer_certificate(hub.host, MQTT_PORT, hub.ca_path)
    first_https = peer_certificate(hub.host, hub.https_port, hub.ca_path)
    assert first["serialNumber"] == first_https["serialNumber"], "both listeners present one certificate"

    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)
    disconnects = []
    set_handler(client, "on_connection_state_change", lambda: disconnects.append(client.connected))
    patches: queue.Queue = queue.Queue()
    set_handler(client, "on_twin_desired_properties_patch_received", patches.put)

    second = renewed(hub.host, MQTT_PORT, hub.ca_path, first["serialNumber"], timeout=LIFETIME_SECS + 10)
    assert second["subject"] == first["subject"]
    assert peer_certificate(hub.host, hub.https_port, hub.ca_path)["serialNumber"] == second["serialNumber"]
    assert "renewed a server certificate" in hub.log_text()

    # The connection opened before the renewal still carries telemetry and twin patches.
    run_with_timeout(lambda: client.send_message("after renewal"), 15, "send_message")
    wait_for(lambda: any(e["body"] == "after renewal" for e in read_events(hub)), 15, "the telemetry at the hub")
    registry.update_twin("dev1", Twin(properties={"desired": {"interval": 7}}), "*")
    patch = patches.get(timeout=15)
    assert patch["interval"] == 7
    assert client.connected and disconnects == [], "the open connection was not dropped"

    # A new device connection after the renewal verifies the new certificate against ca.pem.
    registry.create_device_with_sas("dev2", "", "", "enabled")
    key2 = registry.get_device("dev2").authentication.symmetric_key.primary_key
    fresh = clients.open(hub, "dev2", key2)
    run_with_timeout(lambda: fresh.send_message("new connection"), 15, "send_message")
    written = (hub.data_dir / "server.pem").read_text()
    assert written.startswith("-----BEGIN CERTIFICATE-----")


MODULE = textwrap.dedent("""\
    import json, os, sys, time
    from azure.iot.device import IoTHubModuleClient, Message
    out = sys.argv[1]
    client = IoTHubModuleClient.create_from_edge_environment()
    events = []
    def record(event):
        events.append(event)
        with open(out + ".tmp", "w") as f:
            json.dump(events, f)
        os.replace(out + ".tmp", out)
    def on_state():
        record({"connected": client.connected})
    def on_patch(patch):
        record({"patch": patch})
        client.send_message_to_output(Message(json.dumps({"seen": patch.get("round")})), "out")
    client.on_connection_state_change = on_state
    client.on_twin_desired_properties_patch_received = on_patch
    client.connect()
    client.patch_twin_reported_properties({"ready": True})
    record({"ready": True})
    while True:
        time.sleep(1)
""")


def module_events(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def test_a_module_connected_before_the_edge_hub_renews_its_certificate_keeps_working(hub, tmp_path, loopback):
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next(),
                extra=f'[certificates]\nserver_cert_lifetime = "{LIFETIME_SECS}s"\n')
    try:
        out = tmp_path / "module.json"
        script = tmp_path / "module.py"
        script.write_text(MODULE)
        manifest = deployment({"m": {"version": "1.0", "type": "process", "status": "running",
                                     "restartPolicy": "always",
                                     "settings": {"path": sys.executable, "args": [str(script), str(out)]}}})
        manifest["modulesContent"]["$edgeHub"]["properties.desired"]["routes"] = {
            "up": "FROM /messages/modules/m/outputs/* INTO $upstream"}
        path = tmp_path / "manifest.json"
        path.write_text(json.dumps(manifest))
        hub.run_cli(["deploy", edge.device_id, str(path)])
        edge.start()
        wait_for(lambda: any(e.get("ready") for e in module_events(out)), 60, "the module to connect")
        first = peer_certificate(edge.host, 8883, edge.ca_path)

        second = renewed(edge.host, 8883, edge.ca_path, first["serialNumber"], timeout=LIFETIME_SECS + 10)
        assert second["subject"] == first["subject"]

        # The module's connection from before the renewal still gets twin patches and sends telemetry.
        monitor = Monitor(hub, count=1, timeout=60)
        registry = hub.registry()
        registry.update_module_twin(edge.device_id, "m", Twin(properties={"desired": {"round": 1}}), "*")
        wait_for(lambda: any("patch" in e for e in module_events(out)), 30, "the patch at the module")
        [message] = monitor.messages()
        assert '"seen": 1' in json.dumps(message["body"]) or '\\"seen\\": 1' in json.dumps(message["body"]), message
        events = module_events(out)
        after_ready = events[next(i for i, e in enumerate(events) if e.get("ready")):]
        assert [e for e in after_ready if "connected" in e] == [], f"the module's connection was dropped: {events}"

        # A new connection verifies against the trust bundle the workload API serves (pki/ca.pem).
        peer_certificate(edge.host, 8883, edge.ca_path)

        check = edge.cli("check", check=False).stdout
        server_lines = [line for line in check.splitlines() if "edge hub server certificate" in line]
        assert len(server_lines) == 1 and "not after" in server_lines[0], check
        assert server_lines[0].startswith("ok"), check
        assert any("edge CA" in line and "not after" in line for line in check.splitlines()), check
    finally:
        edge.cleanup()


def test_after_the_hub_ca_renews_clients_with_the_old_or_the_new_ca_pem_both_verify(hub, registry, clients, tmp_path):
    # The lifetime applies to a new CA: start over with none (the fixture's hub made one valid for a year).
    hub.stop()
    for name in ("ca.pem", "ca.key", "ca-cross.pem"):
        (hub.data_dir / name).unlink(missing_ok=True)
    hub.extra_args = ["--ca-lifetime", "30s", "--server-cert-lifetime", "1h"]
    hub.start()
    old_ca = tmp_path / "old-ca.pem"
    old_ca.write_text(hub.ca_pem)
    key = registry.create_device_with_sas("dev1", "", "", "enabled").authentication.symmetric_key.primary_key
    client = clients.open(hub, "dev1", key)

    wait_for(lambda: hub.ca_pem.count("BEGIN CERTIFICATE") == 2, 40, "ca.pem to hold the old and the new CA")
    new_leaf = peer_certificate(hub.host, MQTT_PORT, hub.ca_path)
    assert "Outpost hub CA 2" in str(new_leaf["issuer"])
    # A device that loaded ca.pem before the renewal verifies through the cross-signed CA the server presents.
    assert peer_certificate(hub.host, MQTT_PORT, old_ca)["serialNumber"] == new_leaf["serialNumber"]
    run_with_timeout(lambda: client.send_message("after the CA renewal"), 15, "send_message")
    fresh = clients.open(hub, "dev1", key, server_verification_cert=old_ca.read_text())
    run_with_timeout(lambda: fresh.send_message("old ca.pem, new connection"), 15, "send_message")


SLEEPER = "import time\nwhile True:\n    time.sleep(1)\n"


def workload_trust_bundle(socket_path: Path) -> str:
    """GETs the trust bundle from a module's workload socket, as the Azure SDK does at start."""
    request = (b"GET /trust-bundle?api-version=2022-08-03 HTTP/1.1\r\nHost: localhost\r\n"
               b"Connection: close\r\n\r\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(socket_path))
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", head
    return json.loads(body)["certificate"]


def edge_with_a_module(hub, tmp_path, loopback, certificates: str) -> Edge:
    edge = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next(),
                extra=f"[certificates]\n{certificates}\n")
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    manifest = deployment({"m": {"version": "1.0", "type": "process", "status": "running",
                                 "restartPolicy": "always",
                                 "settings": {"path": sys.executable, "args": [str(script)]}}})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    hub.run_cli(["deploy", edge.device_id, str(path)])
    return edge


def test_after_the_edge_ca_renews_a_modules_trust_bundle_verifies_the_new_server_certificate(
        hub, tmp_path, loopback):
    ca_lifetime = 30
    edge = edge_with_a_module(hub, tmp_path, loopback, f'ca_lifetime = "{ca_lifetime}s"\nserver_cert_lifetime = "1h"')
    try:
        edge.start()
        started = time.time()
        sock = edge.data_dir / "mnt" / "m.sock"
        wait_for(sock.exists, 60, "the module's workload socket")
        first_bundle = workload_trust_bundle(sock)
        assert first_bundle.count("BEGIN CERTIFICATE") == 1
        first = peer_certificate(edge.host, 8883, edge.ca_path)
        first_issuer = first["issuer"]

        # At 80 % of its life the edge CA is renewed and the server certificate reissued under the new one.
        second = wait_for(lambda: (lambda c: c if c["issuer"] != first_issuer else None)(
            peer_certificate(edge.host, 8883, edge.ca_path)), ca_lifetime + 15,
            "a server certificate issued by the renewed edge CA", interval=1)
        assert second["serialNumber"] != first["serialNumber"]

        # Past the old CA's end: only the renewed part of the trust bundle can verify the server.
        time.sleep(max(0.0, started + ca_lifetime + 2 - time.time()))
        bundle = workload_trust_bundle(sock)
        assert bundle != first_bundle
        bundle_path = tmp_path / "bundle-after-renewal.pem"
        bundle_path.write_text(bundle)
        # (Verified against the bundle, or peer_certificate raises.) Issued by the renewed CA, on both ports.
        assert peer_certificate(edge.host, 8883, bundle_path)["issuer"] == second["issuer"]
        assert peer_certificate(edge.host, 443, bundle_path)["issuer"] == second["issuer"]
        # The bundle a module fetched before the renewal no longer does: why modules must fetch it again.
        stale = tmp_path / "bundle-before-renewal.pem"
        stale.write_text(first_bundle)
        with pytest.raises(ssl.SSLError):
            peer_certificate(edge.host, 8883, stale)
        # A server certificate cut short by its CA is renewed at 80 % of the life it got, not on every tick.
        renewals = edge.log_path.read_text(errors="replace").count("renewed a server certificate")
        assert renewals <= 8, f"{renewals} server certificate renewals in {time.time() - started:.0f} s"
    finally:
        edge.cleanup()


def test_edge_check_fails_a_certificate_close_to_expiry_and_an_expired_one(hub, tmp_path, loopback):
    lifetime = 20
    edge = edge_with_a_module(hub, tmp_path, loopback, f'server_cert_lifetime = "{lifetime}s"')
    try:
        edge.start()
        check = edge.cli("check", check=False)
        line = next(l for l in check.stdout.splitlines() if "edge hub server certificate" in l)
        assert line.startswith("ok") and "valid" in line, check.stdout
        # Timed from the certificate's own end, not from when the daemon answered: on a loaded machine the
        # start-up alone can eat the window between 80 % of its life and its end.
        not_after = datetime.fromisoformat(re.search(r"not after (\S+),", line).group(1)).timestamp()
        # Stopped, the daemon renews nothing: past 80 % of its life (here at 90 %) the certificate is close to expiry.
        edge.stop()
        time.sleep(max(0.0, not_after - lifetime * 0.1 - time.time()))
        check = edge.cli("check", check=False)
        line = next(l for l in check.stdout.splitlines() if "edge hub server certificate" in l)
        assert line.startswith("FAIL") and "expiring" in line and "not after" in line, check.stdout
        assert check.returncode != 0, check.stdout

        time.sleep(max(0.0, not_after + 1 - time.time()))
        check = edge.cli("check", check=False)
        line = next(l for l in check.stdout.splitlines() if "edge hub server certificate" in l)
        assert line.startswith("FAIL") and "EXPIRED" in line, check.stdout
        assert check.returncode != 0
    finally:
        edge.cleanup()
