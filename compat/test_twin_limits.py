"""Twin limits (AZURE-COMPAT §3.3): a refused patch is refused whole and changes nothing."""

from __future__ import annotations

import pytest
from azure.iot.device.exceptions import ClientError, ServiceError
from azure.iot.hub.models import Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from harness import run_with_timeout

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    # SQLite and PostgreSQL; not the replicas (storage and validation, no delivery between replicas: kept out
    # to hold the run time down, see README.md)
    pytest.mark.hub_setups("sqlite", "postgres"),
]


def nested(levels: int) -> dict:
    """{"l1": {"l2": ... {"l<levels>": {"leaf": 1}}}}: as a section's content, `levels` objects nested below it.

    IoT Hub's documented example of a valid twin has exactly 10 (tags: one: two: ... ten: {property: value}),
    so 10 is the deepest accepted and 11 is too deep."""
    node: dict = {"leaf": 1}
    for i in range(levels, 0, -1):
        node = {f"l{i}": node}
    return node


def big(total_kb: int) -> dict:
    """Desired/reported content of about total_kb KB, made of strings under the 4 KB string limit."""
    return {f"k{i}": "x" * 4000 for i in range(total_kb // 4)}


def desired(props: dict) -> Twin:
    return Twin(properties=TwinProperties(desired=props))


def snapshot(twin) -> tuple:
    d, r = twin.properties.desired, twin.properties.reported
    return (twin.etag, d["$version"], r["$version"],
            {k: v for k, v in d.items() if not k.startswith("$")},
            {k: v for k, v in r.items() if not k.startswith("$")})


@pytest.fixture
def device(registry):
    created = registry.create_device_with_sas("dev1", "", "", "enabled")
    registry.update_twin("dev1", desired({"keep": "me"}), "*")
    return created.authentication.symmetric_key.primary_key


def test_desired_patch_at_depth_10_is_accepted(registry, device):
    twin = registry.update_twin("dev1", desired(nested(10)), "*")
    assert twin.properties.desired["l1"] == nested(10)["l1"]


def test_tags_at_depth_10_are_accepted(registry, device):
    twin = registry.update_twin("dev1", Twin(tags=nested(10)), "*")
    assert twin.tags == nested(10)


def test_too_deep_desired_patch_is_refused_and_twin_unchanged(registry, device):
    before = snapshot(registry.get_twin("dev1"))
    with pytest.raises(HttpOperationError) as e:
        registry.update_twin("dev1", desired({**nested(11), "other": 1}), "*")
    assert e.value.response.status_code == 400
    assert snapshot(registry.get_twin("dev1")) == before


def test_desired_patch_under_32kb_is_accepted(registry, device):
    twin = registry.update_twin("dev1", desired(big(28)), "*")
    assert twin.properties.desired["k6"] == "x" * 4000


def test_too_large_desired_patch_is_refused_and_twin_unchanged(registry, device):
    before = snapshot(registry.get_twin("dev1"))
    with pytest.raises(HttpOperationError) as e:
        registry.update_twin("dev1", desired(big(36)), "*")
    assert e.value.response.status_code in (400, 413)
    assert snapshot(registry.get_twin("dev1")) == before


def test_patch_that_grows_desired_past_32kb_in_two_steps_is_refused(registry, device):
    registry.update_twin("dev1", desired(big(20)), "*")
    before = snapshot(registry.get_twin("dev1"))
    more = {f"m{i}": "y" * 4000 for i in range(4)}  # +16 KB: each patch is small, the result is not
    with pytest.raises(HttpOperationError):
        registry.update_twin("dev1", desired(more), "*")
    assert snapshot(registry.get_twin("dev1")) == before


@pytest.mark.parametrize("bad", [{"a.b": 1}, {"a b": 1}, {"$x": 1}, {"s": "x" * 5000},
                                 {"n": 4503599627370496}],
                         ids=["dot-in-key", "space-in-key", "dollar-key", "string-over-4kb", "integer-out-of-range"])
def test_illegal_desired_content_is_refused(registry, device, bad):
    before = snapshot(registry.get_twin("dev1"))
    with pytest.raises(HttpOperationError) as e:
        registry.update_twin("dev1", desired(bad), "*")
    assert e.value.response.status_code == 400
    assert snapshot(registry.get_twin("dev1")) == before


def test_too_large_tags_are_refused(registry, device):
    before = registry.get_twin("dev1")
    with pytest.raises(HttpOperationError):
        registry.update_twin("dev1", Twin(tags=big(12)), "*")
    after = registry.get_twin("dev1")
    assert not after.tags
    assert after.etag == before.etag


def test_too_deep_reported_patch_is_refused_and_twin_unchanged(hub, registry, device, clients):
    client = clients.open(hub, "dev1", device)
    run_with_timeout(lambda: client.patch_twin_reported_properties({"ok": 1, **nested(10)}), 15,
                     "valid reported patch at depth 10")
    before = snapshot(registry.get_twin("dev1"))

    with pytest.raises(ClientError) as e:
        run_with_timeout(lambda: client.patch_twin_reported_properties(nested(11)), 15,
                         "too-deep reported patch")
    # The hub answers $iothub/twin/res/400; the SDK surfaces that as ServiceError wrapped in ClientError.
    assert isinstance(e.value.__cause__, ServiceError), f"expected a twin error status, got {e.value.__cause__!r}"
    assert snapshot(registry.get_twin("dev1")) == before

    # the connection is still usable afterwards
    run_with_timeout(lambda: client.patch_twin_reported_properties({"ok": 2}), 15, "reported patch after refusal")
    assert registry.get_twin("dev1").properties.reported["ok"] == 2


def test_too_large_reported_patch_is_refused_and_twin_unchanged(hub, registry, device, clients):
    client = clients.open(hub, "dev1", device)
    before = snapshot(registry.get_twin("dev1"))
    with pytest.raises(ClientError) as e:
        run_with_timeout(lambda: client.patch_twin_reported_properties(big(36)), 15, "too-large reported patch")
    assert isinstance(e.value.__cause__, ServiceError), f"expected a twin error status, got {e.value.__cause__!r}"
    assert snapshot(registry.get_twin("dev1")) == before


def test_reported_patch_with_a_dollar_key_is_refused(hub, registry, device, clients):
    client = clients.open(hub, "dev1", device)
    before = snapshot(registry.get_twin("dev1"))
    with pytest.raises(ClientError) as e:
        run_with_timeout(lambda: client.patch_twin_reported_properties({"$bad": 1, "good": 2}), 15, "reported patch")
    assert isinstance(e.value.__cause__, ServiceError)
    assert snapshot(registry.get_twin("dev1")) == before


def test_reported_patch_under_32kb_is_accepted(hub, registry, device, clients):
    client = clients.open(hub, "dev1", device)
    run_with_timeout(lambda: client.patch_twin_reported_properties(big(28)), 15, "28 KB reported patch")
    assert registry.get_twin("dev1").properties.reported["k6"] == "x" * 4000
