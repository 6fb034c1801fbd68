"""X.509 authentication at the hub (issue 15, item 2): devices and modules registered with thumbprints
(`selfSigned`) or as `certificateAuthority` connect with the unmodified azure-iot-device
`create_from_x509_certificate` over MQTT with a TLS client certificate; the CA certificates are the hub's
(`outpost hub ca add|list|remove`). Refusals are CONNACK 5, which the SDK raises as CredentialError.

Certificates are made by the test with the openssl CLI (the venv has no `cryptography`): EC P-256 keys, v3
certificates, a CA with basicConstraints CA:TRUE."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, X509
from azure.iot.device.exceptions import CredentialError
from msrest.exceptions import HttpOperationError

from harness import Clients, Monitor, monitor_body, run_with_timeout

pytestmark = [pytest.mark.docker_free]


# -- certificates, with the openssl CLI

def openssl(*args: str, cwd: Path) -> None:
    cp = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, f"openssl {' '.join(args)} failed: {cp.stderr}"


class Certs:
    """Makes keys and certificates in a directory; each certificate is (cert_path, key_path)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def self_signed(self, name: str, common_name: str, *, ca: bool = False, days: int = 30) -> tuple[Path, Path]:
        cert, key = self._paths(name)
        extensions = (["-addext", "basicConstraints=critical,CA:TRUE",
                       "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"] if ca else
                      ["-addext", "basicConstraints=critical,CA:FALSE",
                       "-addext", "keyUsage=critical,digitalSignature",
                       "-addext", "extendedKeyUsage=clientAuth"])
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={common_name}", "-days", str(days),
                *extensions, cwd=self.dir)
        return cert, key

    def signed_by(self, name: str, common_name: str, issuer: tuple[Path, Path]) -> tuple[Path, Path]:
        cert, key = self._paths(name)
        csr = self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=clientAuth\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}", cwd=self.dir)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(issuer[0]), "-CAkey", str(issuer[1]),
                "-set_serial", str(uuid.uuid4().int >> 64), "-days", "30", "-extfile", str(ext),
                "-out", str(cert), cwd=self.dir)
        return cert, key


def thumbprint(cert: tuple[Path, Path], algorithm: str = "sha1") -> str:
    der = ssl.PEM_cert_to_DER_cert(cert[0].read_text())
    return hashlib.new(algorithm, der).hexdigest().upper()


@pytest.fixture
def certs(tmp_path) -> Certs:
    return Certs(tmp_path / "certs")


# -- clients

class X509Clients(Clients):
    """Device and module clients with certificates, shut down at teardown."""

    def open(self, hub, cert: tuple[Path, Path], device_id: str, module_id: str | None = None, *,
             connect: bool = True):
        kwargs = {"server_verification_cert": hub.ca_pem, "connection_retry": False}
        x509 = X509(cert_file=str(cert[0]), key_file=str(cert[1]))
        if module_id is None:
            client = IoTHubDeviceClient.create_from_x509_certificate(
                x509=x509, hostname=hub.public_host, device_id=device_id, **kwargs)
        else:
            client = IoTHubModuleClient.create_from_x509_certificate(
                x509=x509, hostname=hub.public_host, device_id=device_id, module_id=module_id, **kwargs)
        self.created.append(client)
        if connect:
            run_with_timeout(client.connect, 20, f"X.509 connect of {device_id}")
        return client


@pytest.fixture
def x509_clients():
    c = X509Clients()
    yield c
    c.close_all()


def assert_refused(x509_clients, hub, cert, device_id, module_id=None):
    client = x509_clients.open(hub, cert, device_id, module_id, connect=False)
    started = time.monotonic()
    with pytest.raises(CredentialError):
        run_with_timeout(client.connect, 15, "X.509 connect that must be refused")
    assert time.monotonic() - started < 5, "a refused CONNECT must be answered at once"
    assert not client.connected


def ca_cli(hub, *args: str, check: bool = True):
    return hub.run_cli(["hub", "ca", *args, "--data-dir", str(hub.data_dir)], hub_env=False, check=check)


def send_and_see(hub, client, device_id: str, module_id: str | None = None) -> None:
    """Sends one telemetry message and finds it in the hub's event stream, from this identity."""
    body = f"x509 {uuid.uuid4().hex}"
    run_with_timeout(lambda: client.send_message(body), 15, "send_message")
    monitor = Monitor(hub, count=1, from_start=True, timeout=15, extra=("--device", device_id))
    (event,) = monitor.messages()
    assert monitor_body(event) == body.encode()
    assert event["deviceId"] == device_id
    if module_id is not None:
        assert event.get("moduleId") == module_id


# -- self-signed: thumbprints in the registry

def test_a_self_signed_device_connects_sends_telemetry_and_reads_its_twin(hub, registry, certs, x509_clients):
    cert = certs.self_signed("dev1", "dev1")
    other = certs.self_signed("other", "other")
    created = registry.create_device_with_x509("dev1", thumbprint(other), thumbprint(cert), "enabled")
    assert created.authentication.type == "selfSigned"
    assert created.authentication.x509_thumbprint.primary_thumbprint == thumbprint(other)
    assert created.authentication.x509_thumbprint.secondary_thumbprint == thumbprint(cert)
    assert registry.get_device("dev1").authentication.type == "selfSigned"

    client = x509_clients.open(hub, cert, "dev1")
    assert client.connected
    send_and_see(hub, client, "dev1")
    twin = run_with_timeout(client.get_twin, 15, "get_twin")
    assert "desired" in twin and "reported" in twin
    run_with_timeout(lambda: client.patch_twin_reported_properties({"auth": "x509"}), 15, "patch reported")
    assert registry.get_twin("dev1").properties.reported["auth"] == "x509"


def test_a_sha256_thumbprint_works_too(hub, registry, certs, x509_clients):
    cert = certs.self_signed("dev1", "dev1")
    registry.create_device_with_x509("dev1", thumbprint(cert, "sha256").lower(), None, "enabled")
    assert x509_clients.open(hub, cert, "dev1").connected


def test_a_certificate_with_another_thumbprint_is_refused(hub, registry, certs, x509_clients):
    registered = certs.self_signed("registered", "dev1")
    stranger = certs.self_signed("stranger", "dev1")
    registry.create_device_with_x509("dev1", thumbprint(registered), None, "enabled")
    assert_refused(x509_clients, hub, stranger, "dev1")


def test_a_disabled_self_signed_device_is_refused(hub, registry, certs, x509_clients):
    cert = certs.self_signed("dev1", "dev1")
    registry.create_device_with_x509("dev1", thumbprint(cert), None, "enabled")
    assert x509_clients.open(hub, cert, "dev1").connected
    registry.update_device_with_x509("dev1", "*", thumbprint(cert), None, "disabled")
    assert_refused(x509_clients, hub, cert, "dev1")


def test_a_sas_device_cannot_connect_with_a_certificate(hub, registry, certs, x509_clients):
    cert = certs.self_signed("dev1", "dev1")
    registry.create_device_with_sas("dev1", "", "", "enabled")
    assert_refused(x509_clients, hub, cert, "dev1")


@pytest.mark.parametrize("bad", ["abc", "Z" * 40, "0" * 41, "01:23:45"])
def test_a_malformed_thumbprint_is_a_400_that_stores_nothing(hub, registry, bad):
    with pytest.raises(HttpOperationError) as refused:
        registry.create_device_with_x509("dev1", bad, None, "enabled")
    assert refused.value.response.status_code == 400
    with pytest.raises(HttpOperationError) as missing:
        registry.get_device("dev1")
    assert missing.value.response.status_code == 404
    registry.create_device_with_sas("dev2", "", "", "enabled")
    with pytest.raises(HttpOperationError) as refused:
        registry.create_module_with_x509("dev2", "m1", None, bad, None)
    assert refused.value.response.status_code == 400
    assert [m.module_id for m in registry.get_modules("dev2")] == []


def test_a_self_signed_module_connects_and_sends(hub, registry, certs, x509_clients):
    cert = certs.self_signed("mod", "dev1")
    registry.create_device_with_sas("dev1", "", "", "enabled")
    module = registry.create_module_with_x509("dev1", "m1", None, thumbprint(cert), None)
    assert module.authentication.type == "selfSigned"
    client = x509_clients.open(hub, cert, "dev1", "m1")
    assert client.connected
    send_and_see(hub, client, "dev1", "m1")
    # The device itself (SAS) cannot use the module's certificate.
    assert_refused(x509_clients, hub, cert, "dev1")


# -- CA-signed: the hub's CA certificates

@pytest.mark.hub_setups("sqlite", "postgres")  # the CA certificates are stored by either engine
def test_ca_signed_devices_connect_until_the_ca_is_removed(hub, registry, certs, x509_clients):
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    added = ca_cli(hub, "add", "fleet", str(ca[0]))
    assert "fleet" in added.stdout
    listed = hub.run_cli(["hub", "ca", "list", "--data-dir", str(hub.data_dir), "--output", "json"],
                         hub_env=False)
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "fleet" and entry["subject"] == "CN=Fleet CA"
    assert entry["thumbprint"] == thumbprint(ca)

    created = registry.create_device_with_certificate_authority("dev1", "enabled")
    assert created.authentication.type == "certificateAuthority"
    leaf = certs.signed_by("dev1", "dev1", ca)
    client = x509_clients.open(hub, leaf, "dev1")
    assert client.connected
    send_and_see(hub, client, "dev1")
    assert "desired" in run_with_timeout(client.get_twin, 15, "get_twin")
    run_with_timeout(client.shutdown, 10, "shutdown")

    ca_cli(hub, "remove", "fleet")
    assert_refused(x509_clients, hub, leaf, "dev1")
    # Removing what is not there is an error that says so.
    again = ca_cli(hub, "remove", "fleet", check=False)
    assert again.returncode != 0 and "no CA certificate named fleet" in again.stderr


def test_a_ca_signed_certificate_naming_another_device_is_refused(hub, registry, certs, x509_clients):
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    ca_cli(hub, "add", "fleet", str(ca[0]))
    registry.create_device_with_certificate_authority("dev1", "enabled")
    registry.create_device_with_certificate_authority("dev2", "enabled")
    leaf_of_dev2 = certs.signed_by("dev2", "dev2", ca)
    assert_refused(x509_clients, hub, leaf_of_dev2, "dev1")
    assert x509_clients.open(hub, leaf_of_dev2, "dev2").connected


def test_a_certificate_of_an_untrusted_ca_is_refused(hub, registry, certs, x509_clients):
    trusted = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    untrusted = certs.self_signed("other-ca", "Other CA", ca=True)
    ca_cli(hub, "add", "fleet", str(trusted[0]))
    registry.create_device_with_certificate_authority("dev1", "enabled")
    assert_refused(x509_clients, hub, certs.signed_by("dev1", "dev1", untrusted), "dev1")
    # A self-signed certificate with the right name is no CA-signed one either.
    assert_refused(x509_clients, hub, certs.self_signed("alone", "dev1"), "dev1")


def test_a_disabled_ca_signed_device_is_refused(hub, registry, certs, x509_clients):
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    ca_cli(hub, "add", "fleet", str(ca[0]))
    registry.create_device_with_certificate_authority("dev1", "enabled")
    leaf = certs.signed_by("dev1", "dev1", ca)
    registry.update_device_with_certificate_authority("dev1", "*", "disabled")
    assert_refused(x509_clients, hub, leaf, "dev1")


def test_a_ca_signed_module_connects_with_its_devices_name(hub, registry, certs, x509_clients):
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    ca_cli(hub, "add", "fleet", str(ca[0]))
    registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.create_module_with_certificate_authority("dev1", "m1", None)
    client = x509_clients.open(hub, certs.signed_by("m1", "dev1", ca), "dev1", "m1")
    assert client.connected
    send_and_see(hub, client, "dev1", "m1")


def test_bad_ca_certificates_are_refused_and_change_nothing(hub, certs, tmp_path):
    leaf = certs.self_signed("leaf", "dev1")
    refused = ca_cli(hub, "add", "leaf", str(leaf[0]), check=False)
    assert refused.returncode != 0 and "not a CA certificate" in refused.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    refused = ca_cli(hub, "add", "garbage", str(garbage), check=False)
    assert refused.returncode != 0 and "exactly one PEM certificate" in refused.stderr
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    bad_name = ca_cli(hub, "add", "no spaces", str(ca[0]), check=False)
    assert bad_name.returncode != 0
    ca_cli(hub, "add", "fleet", str(ca[0]))
    twice = ca_cli(hub, "add", "fleet", str(ca[0]), check=False)
    assert twice.returncode != 0 and "exists already" in twice.stderr
    listed = ca_cli(hub, "list")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["fleet"]


def test_an_x509_device_updated_to_sas_gets_keys_and_its_certificate_no_longer_opens_it(
        hub, registry, certs, x509_clients, clients):
    cert = certs.self_signed("dev1", "dev1")
    registry.create_device_with_x509("dev1", thumbprint(cert), None, "enabled")
    shown = registry.get_device("dev1")
    assert shown.authentication.symmetric_key.primary_key is None
    updated = registry.update_device_with_sas("dev1", "*", "", "", "enabled")
    assert updated.authentication.type == "sas"
    key = updated.authentication.symmetric_key.primary_key
    assert key and updated.authentication.x509_thumbprint.primary_thumbprint is None
    assert_refused(x509_clients, hub, cert, "dev1")
    assert clients.open(hub, "dev1", key).connected
