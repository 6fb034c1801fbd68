"""The provisioning service (issue 15): the unmodified azure-iot-device `ProvisioningDeviceClient` registers with
a symmetric key or an X.509 certificate through an individual enrollment or an enrollment group, gets the hub
and device id it was assigned, and connects there with `IoTHubDeviceClient` to find its initial twin. Refusals (a disabled
enrollment, a wrong key, a malformed request) end the SDK's `register()` with an error instead of a hang, and
create nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse

import pytest
from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient

from harness import (RawMqtt, _bindable, connect_packet, new_key, port_open, publish_packet, run_with_timeout,
                     wait_for)

REGISTER_TIMEOUT = 40


def derive(group_key: str, registration_id: str) -> str:
    """The key a member of a symmetric-key group proves (Azure's documented derivation)."""
    mac = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@pytest.fixture
def dps_hub(hub_factory, loopback):
    """A hub serving provisioning on a loopback address of its own (the SDK dials port 8883 there)."""
    hub = hub_factory()
    dps_host = loopback.next()
    hub.stop()
    hub.extra_args = ["--provisioning-bind", dps_host]
    # The REST variant wants port 443 (what DPS clients dial): only where this user may bind it.
    hub.dps_rest = _bindable(dps_host, 443)
    if not hub.dps_rest:
        hub.extra_args += ["--provisioning-https-port", "0"]
    hub.start()
    wait_for(lambda: port_open(dps_host, 8883), 10, "the provisioning port")
    info = json.loads(hub.run_cli(["hub", "provisioning-info", "--data-dir", str(hub.data_dir),
                                   "--output", "json"], hub_env=False).stdout)
    assert info["host"] == dps_host
    assert info["idScope"].startswith("0ne") and len(info["idScope"]) == 11
    hub.dps_host = info["host"]
    hub.id_scope = info["idScope"]
    return hub


def register(hub, registration_id: str, key: str, id_scope: str | None = None):
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=hub.dps_host,
        registration_id=registration_id,
        id_scope=id_scope or hub.id_scope,
        symmetric_key=key,
        server_verification_cert=hub.ca_pem,
    )
    return run_with_timeout(client.register, REGISTER_TIMEOUT, f"register({registration_id})")


def device_twin_desired(hub, result, key: str, clients) -> dict:
    state = result.registration_state
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=hub.ca_pem)
    clients.created.append(client)
    run_with_timeout(client.connect, 20, "connect with the assigned identity")
    return run_with_timeout(client.get_twin, 20, "get_twin")["desired"]


def registration_token(hub, registration_id: str, key: str) -> str:
    """A registration's SAS token, as the SDK signs it."""
    expiry = int(time.time()) + 3600
    resource = urllib.parse.quote(f"{hub.id_scope}/registrations/{registration_id}", safe="")
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(),
                                    hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}"


def write_twin(tmp_path, name: str, twin: dict):
    path = tmp_path / name
    path.write_text(json.dumps(twin))
    return path


def device_exists(hub, device_id: str) -> bool:
    cp = hub.run_cli(["device", "show", device_id, "--output", "json"], check=False)
    return cp.returncode == 0


@pytest.mark.hub_setups("sqlite", "postgres")
def test_an_individual_enrollment_registers_and_the_device_finds_its_initial_twin(dps_hub, tmp_path, clients):
    hub = dps_hub
    key = new_key()
    twin = write_twin(tmp_path, "twin.json", {"tags": {"site": "north", "line": 3},
                                              "properties": {"desired": {"rate": 5, "unit": "C"}}})
    created = hub.cli_json("enrollment", "create", "sensor-01", "--primary-key", key, "--initial-twin", str(twin))
    assert created["attestation"]["type"] == "symmetricKey"
    assert created["attestation"]["symmetricKey"]["primaryKey"] == key
    assert created["attestation"]["symmetricKey"]["secondaryKey"], "a missing secondary key is generated"

    result = register(hub, "sensor-01", key)
    assert result.status == "assigned"
    state = result.registration_state
    assert (state.device_id, state.assigned_hub, state.sub_status) == ("sensor-01", hub.host, "initialAssignment")

    desired = device_twin_desired(hub, result, key, clients)
    assert desired["rate"] == 5 and desired["unit"] == "C"
    service_twin = hub.registry().get_twin("sensor-01")
    assert service_twin.tags == {"site": "north", "line": 3}
    assert service_twin.capabilities.iot_edge is False

    shown = hub.cli_json("enrollment", "show", "sensor-01")
    assert shown["registration"]["status"] == "assigned"
    assert shown["registration"]["deviceId"] == "sensor-01"

    # Registering again keeps the twin (the default policy migrates device data).
    hub.registry().update_twin("sensor-01", {"properties": {"desired": {"rate": 9}}}, "*")
    again = register(hub, "sensor-01", key)
    assert again.status == "assigned"
    assert again.registration_state.sub_status == "deviceDataMigrated"
    assert hub.registry().get_twin("sensor-01").properties.desired["rate"] == 9

    listed = hub.cli_json("enrollment", "list")
    assert [e["registrationId"] for e in listed] == ["sensor-01"]
    hub.run_cli(["enrollment", "delete", "sensor-01"])
    assert hub.cli_json("enrollment", "list") == []
    assert device_exists(hub, "sensor-01"), "deleting an enrollment leaves its device"


def test_an_enrollment_group_registers_members_with_derived_keys(dps_hub, tmp_path, clients):
    hub = dps_hub
    group_key = new_key()
    twin = write_twin(tmp_path, "twin.json", {"tags": {"fleet": "blue"}, "properties": {"desired": {"mode": "eco"}}})
    hub.cli_json("enrollment-group", "create", "blue-fleet", "--primary-key", group_key, "--initial-twin", str(twin))

    for member in ("blue-1", "blue-2"):
        key = derive(group_key, member)
        result = register(hub, member, key)
        assert result.status == "assigned", result
        assert result.registration_state.device_id == member
        assert device_twin_desired(hub, result, key, clients)["mode"] == "eco"
        assert hub.registry().get_twin(member).tags == {"fleet": "blue"}

    # The group key itself is no member's key; nothing is created for it.
    with pytest.raises(Exception):
        register(hub, "blue-3", group_key)
    assert not device_exists(hub, "blue-3")
    groups = hub.cli_json("enrollment-group", "list")
    assert [g["enrollmentGroupId"] for g in groups] == ["blue-fleet"]


def test_a_disabled_enrollment_is_refused_with_a_complete_answer(dps_hub):
    hub = dps_hub
    key = new_key()
    hub.cli_json("enrollment", "create", "parked", "--primary-key", key, "--disabled")
    # run_with_timeout fails the test if the SDK hangs on an incomplete answer.
    with pytest.raises(Exception) as refused:
        register(hub, "parked", key)
    # The SDK raises ClientError from a ServiceError that names the status it was answered.
    assert "disabled" in str(refused.value.__cause__), repr(refused.value.__cause__)
    assert not device_exists(hub, "parked")
    shown = hub.cli_json("enrollment", "show", "parked")
    assert shown["provisioningStatus"] == "disabled"
    assert shown["registration"]["status"] == "disabled"


def test_a_wrong_key_or_scope_is_refused_and_creates_nothing(dps_hub):
    hub = dps_hub
    key = new_key()
    hub.cli_json("enrollment", "create", "guarded", "--primary-key", key)
    started = time.monotonic()
    with pytest.raises(Exception):
        register(hub, "guarded", new_key())
    with pytest.raises(Exception):
        register(hub, "guarded", key, id_scope="0ne99999999")
    with pytest.raises(Exception):
        register(hub, "nobody-enrolled", key)
    assert time.monotonic() - started < 3 * REGISTER_TIMEOUT
    assert not device_exists(hub, "guarded")
    assert not device_exists(hub, "nobody-enrolled")


def test_a_malformed_registration_request_is_answered_400_and_creates_nothing(dps_hub):
    hub = dps_hub
    key = new_key()
    hub.cli_json("enrollment", "create", "raw-1", "--primary-key", key)
    token = registration_token(hub, "raw-1", key)
    raw = RawMqtt(hub, address=hub.dps_host)
    try:
        raw.send(connect_packet("raw-1", f"{hub.id_scope}/registrations/raw-1/api-version=2019-03-31", token))
        connack = raw.read_packet()
        assert connack is not None and connack[2][1] == 0, connack
        raw.subscribe("$dps/registrations/res/#")
        for body in (b"{not json", json.dumps({"registrationId": "someone-else"}).encode()):
            raw.send(publish_packet("$dps/registrations/PUT/iotdps-register/?$rid=1", body, qos=1))
            while True:
                topic, _, _, _, payload = raw.next_publish()
                if topic.startswith("$dps/registrations/res/"):
                    break
            assert topic.startswith("$dps/registrations/res/400/"), topic
            assert json.loads(payload)["errorCode"] == 400004
        # A publish to any other topic closes the connection.
        raw.send(publish_packet("devices/raw-1/messages/events/", b"x", qos=0))
        assert raw.closed_by_peer(5)
    finally:
        raw.close()
    assert not device_exists(hub, "raw-1")
    assert "registration" not in hub.cli_json("enrollment", "show", "raw-1")


def test_bad_enrollments_are_refused_and_a_key_cannot_stand_in_for_a_certificate(dps_hub, tmp_path):
    import subprocess

    hub = dps_hub
    bad_twin = write_twin(tmp_path, "bad.json", {"tags": ["not", "an", "object"]})
    for args in (["enrollment", "create", "bad-1", "--initial-twin", str(bad_twin)],
                 ["enrollment", "create", "Bad 1"],
                 ["enrollment", "create", "bad-2", "--primary-key", "not base64!"],
                 ["enrollment-group", "create", "bad-3", "--attestation", "x509"]):
        cp = hub.run_cli(args, check=False)
        assert cp.returncode != 0 and cp.stderr.strip(), (args, cp.stdout, cp.stderr)
    assert hub.cli_json("enrollment", "list") == []
    assert hub.cli_json("enrollment-group", "list") == []

    key, cert = tmp_path / "device.key", tmp_path / "device.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=cert-1", "-days", "1"],
                   check=True, capture_output=True)
    created = hub.cli_json("enrollment", "create", "cert-1", "--attestation", "x509", "--certificate", str(cert))
    assert created["attestation"]["type"] == "x509"
    assert "BEGIN CERTIFICATE" in created["attestation"]["x509"]["clientCertificates"]["primary"]["certificate"]
    # A symmetric key cannot stand in for a certificate.
    with pytest.raises(Exception):
        register(hub, "cert-1", new_key())
    assert not device_exists(hub, "cert-1")


def register_x509(hub, registration_id: str, cert):
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=hub.dps_host,
        registration_id=registration_id,
        id_scope=hub.id_scope,
        x509=X509(cert_file=str(cert[0]), key_file=str(cert[1])),
        server_verification_cert=hub.ca_pem,
    )
    return run_with_timeout(client.register, REGISTER_TIMEOUT, f"x509 register({registration_id})")


def x509_twin_desired(hub, result, cert, clients) -> dict:
    state = result.registration_state
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=str(cert[0]), key_file=str(cert[1])), hostname=state.assigned_hub,
        device_id=state.device_id, server_verification_cert=hub.ca_pem, connection_retry=False)
    clients.created.append(client)
    run_with_timeout(client.connect, 20, "X.509 connect with the assigned identity")
    return run_with_timeout(client.get_twin, 20, "get_twin")["desired"]


def test_an_individual_x509_enrollment_registers_and_the_device_connects_with_its_certificate(dps_hub, tmp_path,
                                                                                             clients):
    from test_x509 import Certs, thumbprint

    hub = dps_hub
    certs = Certs(tmp_path / "certs")
    cert = certs.self_signed("cert-1", "cert-1")
    twin = write_twin(tmp_path, "twin.json", {"tags": {"kind": "x509"}, "properties": {"desired": {"rate": 7}}})
    hub.cli_json("enrollment", "create", "cert-1", "--attestation", "x509", "--certificate", str(cert[0]),
                 "--initial-twin", str(twin))

    result = register_x509(hub, "cert-1", cert)
    assert result.status == "assigned", result
    state = result.registration_state
    assert (state.device_id, state.assigned_hub, state.sub_status) == ("cert-1", hub.host, "initialAssignment")
    authentication = hub.registry().get_device("cert-1").authentication
    assert authentication.type == "selfSigned"
    assert authentication.x509_thumbprint.primary_thumbprint.upper() == thumbprint(cert, "sha256")
    assert x509_twin_desired(hub, result, cert, clients)["rate"] == 7
    assert hub.registry().get_twin("cert-1").tags == {"kind": "x509"}

    # Another certificate with the enrolled name is refused, without a hang, and changes nothing.
    impostor = certs.self_signed("impostor", "cert-1")
    started = time.monotonic()
    with pytest.raises(Exception):
        register_x509(hub, "cert-1", impostor)
    assert time.monotonic() - started < REGISTER_TIMEOUT
    authentication = hub.registry().get_device("cert-1").authentication
    assert authentication.x509_thumbprint.primary_thumbprint.upper() == thumbprint(cert, "sha256")


def test_an_x509_enrollment_group_registers_members_signed_by_its_ca(dps_hub, tmp_path, clients):
    from test_x509 import Certs

    hub = dps_hub
    certs = Certs(tmp_path / "certs")
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    other_ca = certs.self_signed("other-ca", "Other CA", ca=True)
    twin = write_twin(tmp_path, "twin.json", {"tags": {"fleet": "x509"}, "properties": {"desired": {"mode": "on"}}})
    hub.cli_json("enrollment-group", "create", "x509-fleet", "--attestation", "x509", "--certificate", str(ca[0]),
                 "--initial-twin", str(twin))

    member = certs.signed_by("cam-1", "cam-1", ca)
    result = register_x509(hub, "cam-1", member)
    assert result.status == "assigned", result
    assert result.registration_state.device_id == "cam-1"
    # The hub does not hold the group's CA: the member connects with its own certificate (selfSigned).
    assert hub.registry().get_device("cam-1").authentication.type == "selfSigned"
    assert x509_twin_desired(hub, result, member, clients)["mode"] == "on"
    assert hub.registry().get_twin("cam-1").tags == {"fleet": "x509"}
    assert hub.cli_json("enrollment-group", "show", "x509-fleet")["enrollmentGroupId"] == "x509-fleet"

    # Refused without a hang, creating nothing: a certificate of another CA, a self-signed one, and a member
    # certificate whose common name is not the registration id it registers as.
    started = time.monotonic()
    for registration_id, cert in (("cam-2", certs.signed_by("cam-2", "cam-2", other_ca)),
                                  ("cam-3", certs.self_signed("cam-3", "cam-3")),
                                  ("cam-4", certs.signed_by("cam-4", "cam-5", ca))):
        with pytest.raises(Exception):
            register_x509(hub, registration_id, cert)
        assert not device_exists(hub, registration_id)
    assert time.monotonic() - started < 3 * REGISTER_TIMEOUT


def test_the_rest_variant_registers_and_refuses_alike(dps_hub):
    """DPS's REST device API on the provisioning host's port 443: register, poll the operation, and a 401 with
    DPS's error body for a token signed with another key."""
    import requests

    hub = dps_hub
    if not hub.dps_rest:
        pytest.skip("cannot bind port 443 on a loopback address (not root?)")
    key = new_key()
    hub.cli_json("enrollment", "create", "rest-1", "--primary-key", key, "--edge")
    base = f"https://{hub.dps_host}/{hub.id_scope}/registrations/rest-1"
    query = {"api-version": "2019-03-31"}
    refused = requests.put(f"{base}/register", params=query, json={"registrationId": "rest-1"},
                           headers={"Authorization": registration_token(hub, "rest-1", new_key())},
                           verify=str(hub.ca_path), timeout=10)
    assert refused.status_code == 401 and refused.json()["errorCode"] == 401002, refused.text
    assert not device_exists(hub, "rest-1")

    auth = {"Authorization": registration_token(hub, "rest-1", key)}
    started = requests.put(f"{base}/register", params=query, json={"registrationId": "rest-1"}, headers=auth,
                           verify=str(hub.ca_path), timeout=10)
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "assigning" and int(started.headers["Retry-After"]) >= 1
    status = requests.get(f"{base}/operations/{started.json()['operationId']}", params=query, headers=auth,
                          verify=str(hub.ca_path), timeout=10)
    assert status.status_code == 200, status.text
    state = status.json()["registrationState"]
    assert (status.json()["status"], state["deviceId"], state["assignedHub"]) == ("assigned", "rest-1", hub.host)
    assert hub.cli_json("device", "show", "rest-1")["capabilities"]["iotEdge"] is True
    unknown = requests.get(f"{base}/operations/nope", params=query, headers=auth, verify=str(hub.ca_path),
                           timeout=10)
    assert unknown.status_code == 404


def test_the_rest_variant_attests_with_a_client_certificate(dps_hub, tmp_path):
    """DPS's REST device API with X.509: no Authorization header, the device's certificate at the TLS handshake
    (as DPS's REST clients do); an untrusted certificate is a 401 and creates nothing."""
    import requests

    from test_x509 import Certs

    hub = dps_hub
    if not hub.dps_rest:
        pytest.skip("cannot bind port 443 on a loopback address (not root?)")
    certs = Certs(tmp_path / "certs")
    ca = certs.self_signed("fleet-ca", "Fleet CA", ca=True)
    hub.cli_json("enrollment-group", "create", "rest-cams", "--attestation", "x509", "--certificate", str(ca[0]))
    query = {"api-version": "2019-03-31"}

    def put_register(registration_id, cert):
        return requests.put(f"https://{hub.dps_host}/{hub.id_scope}/registrations/{registration_id}/register",
                            params=query, json={"registrationId": registration_id},
                            cert=(str(cert[0]), str(cert[1])), verify=str(hub.ca_path), timeout=10)

    stranger = certs.self_signed("rest-cam-9", "rest-cam-9")
    refused = put_register("rest-cam-9", stranger)
    assert refused.status_code == 401 and refused.json()["errorCode"] == 401002, refused.text
    assert not device_exists(hub, "rest-cam-9")

    member = certs.signed_by("rest-cam-1", "rest-cam-1", ca)
    started = put_register("rest-cam-1", member)
    assert started.status_code == 202, started.text
    status = requests.get(f"https://{hub.dps_host}/{hub.id_scope}/registrations/rest-cam-1/operations/"
                          f"{started.json()['operationId']}", params=query, cert=(str(member[0]), str(member[1])),
                          verify=str(hub.ca_path), timeout=10)
    assert status.status_code == 200, status.text
    assert (status.json()["status"], status.json()["registrationState"]["deviceId"]) == ("assigned", "rest-cam-1")
    assert hub.registry().get_device("rest-cam-1").authentication.type == "selfSigned"


SLEEPER = "import time\nwhile True:\n    time.sleep(1)\n"


def write_edge_config(tmp_path, hub, edge_host, data_dir, attestation: str, name: str = "edge.toml"):
    """An edge daemon's config.toml that provisions itself through `hub` with the `[provisioning.attestation]`
    lines `attestation`."""
    config = tmp_path / name
    config.write_text(
        f'hub_ca = "{hub.ca_path}"\n'
        f"hub_https_port = {hub.https_port}\n"
        f'data_dir = "{data_dir}"\n'
        f'hostname = "{edge_host}"\n'
        f'listen_address = "{edge_host}"\n'
        "\n[runtime]\ntype = \"process\"\n"
        "\n[provisioning]\nsource = \"dps\"\n"
        f'global_endpoint = "https://{hub.dps_host}"\n'
        f'id_scope = "{hub.id_scope}"\n'
        f"\n[provisioning.attestation]\n{attestation}")
    return config


def start_edge(config, log_path):
    """`outpost edge run --config CONFIG`, its output appended to `log_path`."""
    import subprocess

    from harness import outpost_bin

    with open(log_path, "ab") as log:
        return subprocess.Popen([str(outpost_bin()), "edge", "run", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def stop_edge(proc):
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def kill_process_modules(data_dir):
    import os
    import signal

    for pid_file in (data_dir / "processes").glob("*/pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ValueError, OSError):
            pass


def deploy_sleeper(hub, tmp_path, name: str, target_condition: str):
    """An automatic deployment of one process module, `sleeper`, to the edge devices `target_condition` selects."""
    import sys

    from edge_harness import deployment

    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    module = {"version": "1.0", "type": "process", "status": "running", "restartPolicy": "always",
              "startupOrder": 0, "settings": {"path": sys.executable, "args": [str(script)]}}
    content = tmp_path / f"{name}.json"
    content.write_text(json.dumps(deployment({"sleeper": module})))
    hub.cli_json("deployment", "create", name, "--content", str(content), "--target-condition", target_condition,
                 "--priority", "5")


def sleeper_running(reported) -> bool:
    return ((reported.get("modules") or {}).get("sleeper") or {}).get("runtimeStatus") == "running"


def start_again_from_the_stored_assignment(hub, config, log_path, data_dir, up, what: str) -> None:
    """Restarts the hub without its provisioning service and starts the edge daemon again: it must come up from
    the assignment it stored (`up` says when it is), not register again."""
    hub.stop()
    hub.extra_args = []
    hub.start()
    assert not port_open(hub.dps_host, 8883)
    second_start = log_path.stat().st_size
    proc = start_edge(config, log_path)
    try:
        wait_for(lambda: "using the stored assignment" in log_path.read_text(errors="replace")[second_start:]
                 or proc.poll() is not None, 30, "the edge daemon to start again from its stored assignment")
        wait_for(lambda: up() or proc.poll() is not None, 60, what)
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
    finally:
        stop_edge(proc)
        kill_process_modules(data_dir)


def test_an_edge_daemon_provisions_itself_and_runs_the_deployment_its_initial_tags_select(dps_hub, tmp_path,
                                                                                          loopback):
    """`[provisioning] source = "dps"`: the daemon registers through a group with `--edge` and an initial twin
    with tags, connects to the assigned hub, runs the automatic deployment that targets those tags, and starts
    again from what it stored with the provisioning service gone."""
    import subprocess

    from edge_harness import wait_reported
    from harness import outpost_bin

    hub = dps_hub
    group_key = new_key()
    twin = write_twin(tmp_path, "twin.json", {"tags": {"site": "plant-7", "role": "gateway"}})
    hub.cli_json("enrollment-group", "create", "gateways", "--primary-key", group_key, "--edge",
                 "--initial-twin", str(twin))
    deploy_sleeper(hub, tmp_path, "plant-7-gateways", "tags.site = 'plant-7' AND tags.role = 'gateway'")

    registration_id = "gw-0001"
    edge_host = loopback.next()
    data_dir = tmp_path / "edge-data"
    config = write_edge_config(
        tmp_path, hub, edge_host, data_dir,
        "method = \"symmetric_key\"\n"
        f'registration_id = "{registration_id}"\n'
        f'symmetric_key = {{ value = "{derive(group_key, registration_id)}" }}\n')
    log_path = tmp_path / "edge.log"

    proc = start_edge(config, log_path)
    try:
        wait_for(lambda: (data_dir / "provisioning.json").exists() or proc.poll() is not None, 60,
                 "the edge device to register and store its assignment")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        device = hub.cli_json("device", "show", registration_id)
        assert device["capabilities"]["iotEdge"] is True
        assert hub.registry().get_twin(registration_id).tags == {"site": "plant-7", "role": "gateway"}
        stored = json.loads((data_dir / "provisioning.json").read_text())
        assert (stored["assignedHub"], stored["deviceId"]) == (hub.host, registration_id)
        assert (data_dir / "provisioning.json").stat().st_mode & 0o077 == 0, "the stored key is private"
        wait_reported(hub, registration_id, sleeper_running, 90,
                      "the targeted deployment's module running on the provisioned edge")
    finally:
        stop_edge(proc)

    check = subprocess.run([str(outpost_bin()), "edge", "check", "--config", str(config)], capture_output=True,
                           text=True, timeout=60)
    assert f"{registration_id} on {hub.host}" in check.stdout, check.stdout

    # Later starts use what was stored: no provisioning service needed.
    start_again_from_the_stored_assignment(hub, config, log_path, data_dir,
                                           lambda: port_open(edge_host, 8883), "the edge hub's MQTT port")


def test_an_edge_daemon_provisions_itself_with_a_certificate_and_runs_as_that_device(dps_hub, tmp_path, loopback):
    """`[provisioning.attestation] method = "x509"`: the daemon registers through an X.509 group with the
    certificate its CA signed (registration id: the certificate's common name), is created selfSigned with that
    certificate's thumbprint, and from then on authenticates to the hub with the certificate alone (module
    identities, the upstream link): the deployment its initial tags select runs and `$edgeAgent` reports it. Later
    starts need no provisioning service. Its stored assignment names the files and holds no key."""
    import subprocess

    from edge_harness import wait_reported
    from harness import outpost_bin
    from test_x509 import Certs, thumbprint

    hub = dps_hub
    certs = Certs(tmp_path / "certs")
    ca = certs.self_signed("fleet-ca", "Gateway CA", ca=True)
    twin = write_twin(tmp_path, "twin.json", {"tags": {"site": "plant-9", "role": "x509-gateway"}})
    hub.cli_json("enrollment-group", "create", "x509-gateways", "--attestation", "x509", "--certificate", str(ca[0]),
                 "--edge", "--initial-twin", str(twin))
    deploy_sleeper(hub, tmp_path, "plant-9-gateways", "tags.site = 'plant-9' AND tags.role = 'x509-gateway'")

    device_id = "gw-x509-1"
    cert = certs.signed_by(device_id, device_id, ca)
    edge_host = loopback.next()
    data_dir = tmp_path / "edge-data"
    config = write_edge_config(
        tmp_path, hub, edge_host, data_dir,
        "method = \"x509\"\n"
        f'identity_cert = "file://{cert[0]}"\n'
        f'identity_pk = "{cert[1]}"\n')
    log_path = tmp_path / "edge.log"

    proc = start_edge(config, log_path)
    try:
        wait_for(lambda: (data_dir / "provisioning.json").exists() or proc.poll() is not None, 60,
                 "the edge device to register with its certificate and store its assignment")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        device = hub.cli_json("device", "show", device_id)
        assert device["capabilities"]["iotEdge"] is True
        authentication = hub.registry().get_device(device_id).authentication
        assert authentication.type == "selfSigned"
        assert authentication.x509_thumbprint.primary_thumbprint.upper() == thumbprint(cert, "sha256")
        assert hub.registry().get_twin(device_id).tags == {"site": "plant-9", "role": "x509-gateway"}
        stored = json.loads((data_dir / "provisioning.json").read_text())
        assert (stored["assignedHub"], stored["deviceId"], stored["registrationId"]) == (hub.host, device_id,
                                                                                         device_id)
        assert (stored["identityCert"], stored["identityPk"]) == (str(cert[0]), str(cert[1]))
        assert "key" not in stored and "PRIVATE" not in json.dumps(stored)

        # The device has no key: whatever the daemon did in the hub, it did with its certificate.
        reported = wait_reported(hub, device_id, sleeper_running, 90,
                                 "the targeted deployment's module running on the certificate-provisioned edge")
        assert reported["modules"]["sleeper"]["runtimeStatus"] == "running"
        modules = {m.module_id: m for m in hub.registry().get_modules(device_id)}
        assert {"$edgeAgent", "$edgeHub", "sleeper"} <= set(modules), sorted(modules)
        assert modules["sleeper"].authentication.type == "sas", "module identities keep SAS keys"
        wait_for(lambda: hub.registry().get_module(device_id, "$edgeAgent").connection_state == "Connected", 30,
                 "$edgeAgent connected through the edge's upstream link")
    finally:
        stop_edge(proc)

    check = subprocess.run([str(outpost_bin()), "edge", "check", "--config", str(config)], capture_output=True,
                           text=True, timeout=60)
    assert f"{device_id} on {hub.host}" in check.stdout, check.stdout
    assert f"ok   identity certificate: CN={device_id}, SHA-256 {thumbprint(cert, 'sha256')}" in check.stdout, \
        check.stdout
    assert "ok   hub: reachable with this device's credentials" in check.stdout, check.stdout

    # Later starts use what was stored: no provisioning service needed, the certificate still opens the hub.
    start_again_from_the_stored_assignment(
        hub, config, log_path, data_dir,
        lambda: hub.registry().get_module(device_id, "$edgeAgent").connection_state == "Connected",
        "$edgeAgent connected again after the restart")


def test_an_edge_daemon_with_an_untrusted_or_unreadable_certificate_stops_with_a_clear_error(dps_hub, tmp_path,
                                                                                              loopback):
    """A certificate that no enrollment trusts is refused by the provisioning service: the daemon stops at once
    (no retry loop), saying so, and nothing is created. A missing key file stops it before it registers, naming
    the file."""
    import subprocess

    from harness import outpost_bin
    from test_x509 import Certs

    hub = dps_hub
    certs = Certs(tmp_path / "certs")
    ca = certs.self_signed("fleet-ca", "Gateway CA", ca=True)
    other_ca = certs.self_signed("other-ca", "Other CA", ca=True)
    hub.cli_json("enrollment-group", "create", "x509-gateways", "--attestation", "x509", "--certificate", str(ca[0]),
                 "--edge")
    edge_host = loopback.next()

    def run(name: str, attestation: str) -> subprocess.CompletedProcess:
        config = write_edge_config(tmp_path, hub, edge_host, tmp_path / f"{name}-data", attestation,
                                   name=f"{name}.toml")
        return subprocess.run([str(outpost_bin()), "edge", "run", "--config", str(config)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=REGISTER_TIMEOUT)

    stranger = certs.signed_by("gw-stranger", "gw-stranger", other_ca)
    refused = run("stranger", f'method = "x509"\nidentity_cert = "{stranger[0]}"\nidentity_pk = "{stranger[1]}"\n')
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "gw-stranger" in output and "refused" in output, output
    assert not device_exists(hub, "gw-stranger")
    assert not (tmp_path / "stranger-data" / "provisioning.json").exists()

    member = certs.signed_by("gw-member", "gw-member", ca)
    missing_key = tmp_path / "certs" / "nowhere.key"
    broken = run("broken", f'method = "x509"\nidentity_cert = "{member[0]}"\nidentity_pk = "{missing_key}"\n')
    output = broken.stdout + broken.stderr
    assert broken.returncode != 0, output
    assert str(missing_key) in output and "identity_pk" in output, output
    assert not device_exists(hub, "gw-member")
