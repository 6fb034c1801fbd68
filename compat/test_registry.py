"""Identity registry through azure-iot-hub 2.7.0 (AZURE-COMPAT §4): devices, modules, etags, ids."""

from __future__ import annotations

import base64

import pytest
from msrest.exceptions import HttpOperationError

from harness import new_key

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    # SQLite and PostgreSQL; not the replicas (storage and validation, no delivery between replicas: kept out
    # to hold the run time down, see README.md)
    pytest.mark.hub_setups("sqlite", "postgres"),
]


def status_of(excinfo) -> int:
    return excinfo.value.response.status_code


def keys_of(identity) -> tuple[str, str]:
    sk = identity.authentication.symmetric_key
    return sk.primary_key, sk.secondary_key


def assert_generated_key(key: str) -> None:
    assert key, "the hub must generate a key when the request leaves it empty"
    assert len(base64.b64decode(key, validate=True)) >= 16, f"generated key too short: {key!r}"


@pytest.mark.parametrize("given", ["", None], ids=["empty-strings", "omitted"])
def test_create_device_generates_keys_when_none_are_given(registry, given):
    created = registry.create_device_with_sas("dev1", given, given, "enabled")

    assert created.device_id == "dev1"
    assert created.status == "enabled"
    assert created.authentication.type == "sas"
    primary, secondary = keys_of(created)
    assert_generated_key(primary)
    assert_generated_key(secondary)
    assert primary != secondary
    assert created.etag, "a device carries an etag"
    assert created.generation_id, "a device carries a generationId"
    assert not created.capabilities.iot_edge

    fetched = registry.get_device("dev1")
    assert keys_of(fetched) == (primary, secondary)
    assert fetched.etag == created.etag


def test_create_device_keeps_the_keys_it_is_given(registry):
    primary, secondary = new_key(), new_key()
    created = registry.create_device_with_sas("dev-given", primary, secondary, "enabled")
    assert keys_of(created) == (primary, secondary)
    assert keys_of(registry.get_device("dev-given")) == (primary, secondary)


def test_update_device_with_its_etag_changes_it_and_its_etag(registry):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    primary, secondary = new_key(), new_key()

    updated = registry.update_device_with_sas("dev1", created.etag, primary, secondary, "disabled")

    assert updated.status == "disabled"
    assert keys_of(updated) == (primary, secondary)
    assert updated.etag and updated.etag != created.etag, "an update must change the identity's etag"
    fetched = registry.get_device("dev1")
    assert fetched.status == "disabled"
    assert keys_of(fetched) == (primary, secondary)
    assert fetched.generation_id == created.generation_id, "an update keeps the generationId"


def test_update_device_with_wildcard_etag_succeeds(registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    primary = new_key()
    updated = registry.update_device_with_sas("dev1", "*", primary, new_key(), "enabled")
    assert keys_of(updated)[0] == primary
    assert keys_of(registry.get_device("dev1"))[0] == primary


def test_update_device_with_stale_etag_is_refused_with_412_and_changes_nothing(registry):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    current = registry.update_device_with_sas("dev1", created.etag, new_key(), new_key(), "enabled")

    with pytest.raises(HttpOperationError) as e:
        registry.update_device_with_sas("dev1", created.etag, new_key(), new_key(), "disabled")
    assert status_of(e) == 412

    fetched = registry.get_device("dev1")
    assert fetched.status == "enabled"
    assert keys_of(fetched) == keys_of(current)
    assert fetched.etag == current.etag


def test_creating_an_existing_device_is_refused_with_409(registry):
    first = registry.create_device_with_sas("dev1", "", "", "enabled")
    with pytest.raises(HttpOperationError) as e:
        registry.create_device_with_sas("dev1", new_key(), new_key(), "enabled")
    assert status_of(e) == 409
    assert keys_of(registry.get_device("dev1")) == keys_of(first), "a refused create must not change the keys"


@pytest.mark.parametrize("bad_id", ["bad/id", "a b", "x" * 129, "caf\u00e9", "semi;colon"])
def test_illegal_device_ids_are_refused_with_400(registry, bad_id):
    with pytest.raises(HttpOperationError) as e:
        registry.create_device_with_sas(bad_id, "", "", "enabled")
    assert status_of(e) == 400
    with pytest.raises(HttpOperationError):
        registry.get_device(bad_id)


def test_every_legal_id_character_round_trips(registry):
    # AZURE-COMPAT §3.4: ASCII alphanumerics plus - . + % _ # * ? ! ( ) , = @ $ '
    device_id = "Dev-1.a+b%c_d#e*f?g!h(i)j,k=l@m$n'o"
    assert len(device_id) <= 128
    created = registry.create_device_with_sas(device_id, "", "", "enabled")
    assert created.device_id == device_id
    assert registry.get_device(device_id).device_id == device_id
    module = registry.create_module_with_sas(device_id, "mod$1.x", None, "", "")
    assert module.module_id == "mod$1.x"
    assert registry.get_module(device_id, "mod$1.x").device_id == device_id


def test_ids_are_case_sensitive(registry):
    registry.create_device_with_sas("Dev", "", "", "enabled")
    registry.create_device_with_sas("dev", "", "", "enabled")
    assert registry.get_device("Dev").device_id == "Dev"
    assert registry.get_device("dev").device_id == "dev"
    assert keys_of(registry.get_device("Dev")) != keys_of(registry.get_device("dev"))


def test_delete_device_removes_it_and_its_twin(registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.create_module_with_sas("dev1", "m1", None, "", "")

    registry.delete_device("dev1")

    with pytest.raises(HttpOperationError) as e:
        registry.get_device("dev1")
    assert status_of(e) == 404
    with pytest.raises(HttpOperationError) as e:
        registry.get_twin("dev1")
    assert status_of(e) == 404
    with pytest.raises(HttpOperationError) as e:
        registry.get_module("dev1", "m1")
    assert status_of(e) == 404


def test_delete_device_with_stale_etag_is_refused_with_412(registry):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.update_device_with_sas("dev1", "*", new_key(), new_key(), "enabled")
    with pytest.raises(HttpOperationError) as e:
        registry.delete_device("dev1", etag=created.etag)
    assert status_of(e) == 412
    assert registry.get_device("dev1").device_id == "dev1"


def test_deleting_or_getting_a_missing_device_is_404(registry):
    with pytest.raises(HttpOperationError) as e:
        registry.get_device("nobody")
    assert status_of(e) == 404
    with pytest.raises(HttpOperationError) as e:
        registry.delete_device("nobody")
    assert status_of(e) == 404


def test_a_recreated_device_gets_a_new_generation_id(registry):
    first = registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.delete_device("dev1")
    second = registry.create_device_with_sas("dev1", "", "", "enabled")
    assert second.generation_id != first.generation_id


def test_module_create_get_list_delete(registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")

    m1 = registry.create_module_with_sas("dev1", "m1", None, "", "")
    given = (new_key(), new_key())
    m2 = registry.create_module_with_sas("dev1", "m2", "someone", *given)

    assert (m1.module_id, m1.device_id) == ("m1", "dev1")
    assert_generated_key(keys_of(m1)[0])
    assert_generated_key(keys_of(m1)[1])
    assert keys_of(m2) == given
    assert m2.managed_by == "someone"

    got = registry.get_module("dev1", "m1")
    assert (got.module_id, got.device_id) == ("m1", "dev1")
    assert keys_of(got) == keys_of(m1)
    assert sorted(m.module_id for m in registry.get_modules("dev1")) == ["m1", "m2"]

    registry.delete_module("dev1", "m1")

    with pytest.raises(HttpOperationError) as e:
        registry.get_module("dev1", "m1")
    assert status_of(e) == 404
    assert [m.module_id for m in registry.get_modules("dev1")] == ["m2"]
    with pytest.raises(HttpOperationError) as e:
        registry.get_module_twin("dev1", "m1")
    assert status_of(e) == 404


def test_module_update_with_etag_and_conflicts(registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    created = registry.create_module_with_sas("dev1", "m1", None, "", "")
    with pytest.raises(HttpOperationError) as e:
        registry.create_module_with_sas("dev1", "m1", None, "", "")
    assert status_of(e) == 409

    new = (new_key(), new_key())
    updated = registry.update_module_with_sas("dev1", "m1", None, created.etag, *new)
    assert keys_of(updated) == new
    with pytest.raises(HttpOperationError) as e:
        registry.update_module_with_sas("dev1", "m1", None, created.etag, new_key(), new_key())
    assert status_of(e) == 412
    assert keys_of(registry.get_module("dev1", "m1")) == new


def test_module_on_a_missing_device_is_404(registry):
    with pytest.raises(HttpOperationError) as e:
        registry.create_module_with_sas("nobody", "m1", None, "", "")
    assert status_of(e) == 404


def test_illegal_module_id_is_refused_with_400(registry):
    registry.create_device_with_sas("dev1", "", "", "enabled")
    with pytest.raises(HttpOperationError) as e:
        registry.create_module_with_sas("dev1", "bad module", None, "", "")
    assert status_of(e) == 400
    assert registry.get_modules("dev1") == []


def test_edge_device_has_the_edge_capability_scope_and_system_modules(registry):
    created = registry.create_device_with_sas("edge1", "", "", "enabled", iot_edge=True)

    assert created.capabilities.iot_edge is True
    fetched = registry.get_device("edge1")
    assert fetched.capabilities.iot_edge is True
    # AZURE-COMPAT §4: deviceScope = ms-azure-iot-edge://{deviceId}-{generationId}
    assert fetched.device_scope == f"ms-azure-iot-edge://edge1-{fetched.generation_id}"
    # IoT Hub creates the two system module identities with an edge device; deployments write their twins.
    module_ids = {m.module_id for m in registry.get_modules("edge1")}
    assert {"$edgeAgent", "$edgeHub"} <= module_ids
    assert registry.get_module_twin("edge1", "$edgeAgent").module_id == "$edgeAgent"


def test_plain_device_is_not_an_edge_device(registry):
    registry.create_device_with_sas("leaf", "", "", "enabled", iot_edge=False)
    fetched = registry.get_device("leaf")
    assert not fetched.capabilities.iot_edge
    assert registry.get_modules("leaf") == []


def test_get_devices_lists_every_device(registry):
    for name in ("a", "b", "c"):
        registry.create_device_with_sas(name, "", "", "enabled")
    devices = registry.get_devices()
    assert sorted(d.device_id for d in devices) == ["a", "b", "c"]
    assert all(d.authentication.symmetric_key.primary_key for d in devices)


def test_get_devices_honours_top(registry):
    # azure-iot-hub sends GET /devices?top=N for max_number_of_devices
    for name in ("a", "b", "c"):
        registry.create_device_with_sas(name, "", "", "enabled")
    assert len(registry.get_devices(max_number_of_devices=2)) == 2


def test_leaf_device_takes_its_parents_scope(registry):
    edge = registry.create_device_with_sas("edge1", "", "", "enabled", iot_edge=True)
    leaf = registry.create_device_with_sas("leaf1", "", "", "enabled", device_scope=edge.device_scope)
    assert leaf.device_scope == edge.device_scope
    fetched = registry.get_device("leaf1")
    assert fetched.device_scope == edge.device_scope
    # "For leaf devices, parent_scopes ... could be left for the service to copy over" (azure-iot-hub docs)
    assert fetched.parent_scopes == [edge.device_scope]
