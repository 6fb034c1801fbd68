"""X.509 authentication at the edge hub (issue 15, item 2): downstream devices registered with thumbprints or as
CA-signed connect through an edge device with the unmodified azure-iot-device `create_from_x509_certificate`
(`gateway_hostname`), checked against the scope the edge caches from the hub (identities with their thumbprints,
and the hub's CA certificates); refusals are CONNACK 5 (CredentialError)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from azure.iot.device import IoTHubDeviceClient, X509
from azure.iot.device.exceptions import CredentialError

from harness import Monitor, run_with_timeout
from test_x509 import Certs, ca_cli, thumbprint

pytestmark = [pytest.mark.docker_free]


def empty_deployment(hub, edge, tmp_path) -> None:
    manifest = tmp_path / "manifest.json"
    from edge_harness import deployment
    content = deployment({})
    content["modulesContent"]["$edgeHub"]["properties.desired"]["routes"] = {"leaves": "FROM /messages/* INTO $upstream"}
    manifest.write_text(json.dumps(content))
    hub.run_cli(["deploy", edge.device_id, str(manifest)])


class Leaves:
    def __init__(self, hub, edge) -> None:
        self.hub, self.edge, self.created = hub, edge, []

    def open(self, cert, device_id: str, *, connect: bool = True):
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(cert_file=str(cert[0]), key_file=str(cert[1])), hostname=self.hub.host,
            device_id=device_id, gateway_hostname=self.edge.host,
            server_verification_cert=self.edge.ca_path.read_text(), connection_retry=False)
        self.created.append(client)
        if connect:
            run_with_timeout(client.connect, 20, f"X.509 connect of {device_id} through the edge")
        return client

    def refused(self, cert, device_id: str) -> None:
        client = self.open(cert, device_id, connect=False)
        started = time.monotonic()
        with pytest.raises(CredentialError):
            run_with_timeout(client.connect, 15, "X.509 connect through the edge that must be refused")
        assert time.monotonic() - started < 5, "a refused CONNECT must be answered at once"

    def close_all(self) -> None:
        for client in self.created:
            try:
                run_with_timeout(client.shutdown, 10, "client shutdown")
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def leaves(hub, edge):
    found = Leaves(hub, edge)
    yield found
    found.close_all()


def test_x509_downstream_devices_connect_through_the_edge_and_bad_certificates_are_refused(
        hub, edge, registry, tmp_path, leaves):
    certs = Certs(tmp_path / "certs")
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    ca_cli(hub, "add", "fleet", str(ca[0]))
    empty_deployment(hub, edge, tmp_path)
    edge.start()
    scope = registry.get_device(edge.device_id).device_scope
    assert scope, "an edge device has a scope"
    self_signed = certs.self_signed("thumb-leaf", "thumb-leaf")
    registry.create_device_with_x509("thumb-leaf", thumbprint(self_signed), None, "enabled", device_scope=scope)
    registry.create_device_with_certificate_authority("ca-leaf", "enabled", device_scope=scope)
    registry.create_device_with_certificate_authority("ca-other", "enabled", device_scope=scope)
    ca_signed = certs.signed_by("ca-leaf", "ca-leaf", ca)

    monitor = Monitor(hub, count=2, timeout=60)
    thumb_client = leaves.open(self_signed, "thumb-leaf")
    ca_client = leaves.open(ca_signed, "ca-leaf")
    body = uuid.uuid4().hex
    run_with_timeout(lambda: thumb_client.send_message(f"thumb {body}"), 15, "send through the edge")
    run_with_timeout(lambda: ca_client.send_message(f"ca {body}"), 15, "send through the edge")
    got = monitor.messages()
    assert sorted((m["deviceId"], m["body"]) for m in got) == [("ca-leaf", f"ca {body}"),
                                                                ("thumb-leaf", f"thumb {body}")]
    assert "desired" in run_with_timeout(ca_client.get_twin, 15, "get_twin through the edge")

    # Refused: a CA-signed certificate naming another device, one of an untrusted CA, a stranger's thumbprint.
    leaves.refused(ca_signed, "ca-other")
    untrusted = certs.self_signed("other-ca", "Other CA", ca=True)
    leaves.refused(certs.signed_by("ca-other", "ca-other", untrusted), "ca-other")
    leaves.refused(certs.self_signed("stranger", "thumb-leaf"), "thumb-leaf")
