"""Fleet operations through azure-iot-hub 2.7.0: queries with paging (`query_iot_hub`), the bulk registry
operation (`bulk_create_or_update_devices`), registry statistics, and tags written by the service then queried;
and the operator CLI's `outpost query` and `outpost twin update --tags`."""

from __future__ import annotations

import pytest
from azure.iot.hub.models import ExportImportDevice, QuerySpecification, Twin
from msrest.exceptions import HttpOperationError

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups("sqlite", "postgres"),
]


def bulk(registry, *devices: ExportImportDevice):
    return registry.bulk_create_or_update_devices(list(devices))


def query_pages(registry, query: str, page_size: int):
    """Every row of `query`, following the continuation token; and the pages it took."""
    rows, pages, token = [], 0, None
    while True:
        result = registry.query_iot_hub(QuerySpecification(query=query), token, page_size)
        pages += 1
        rows.extend(result.items)
        token = result.continuation_token
        if not token:
            return rows, pages, result.type


def test_bulk_create_then_a_query_by_tag_pages_through_the_matches(registry):
    devices = [ExportImportDevice(id=f"fleet-{i:02}", import_mode="create",
                                  tags={"site": "north" if i % 3 else "south"}) for i in range(30)]
    result = bulk(registry, *devices)
    assert result.is_successful, result.errors
    assert result.errors == []

    rows, pages, item_type = query_pages(registry, "SELECT * FROM devices WHERE tags.site = 'north'", 7)
    assert sorted(row.device_id for row in rows) == [f"fleet-{i:02}" for i in range(30) if i % 3]
    assert pages == 3, "20 rows in pages of 7"
    assert item_type == "twin"
    assert all(row.tags == {"site": "north"} for row in rows)
    assert all(row.etag for row in rows)


def test_bulk_reports_each_failed_device_and_applies_the_others(registry):
    registry.create_device_with_sas("taken", None, None, "enabled")
    registry.create_device_with_sas("doomed", None, None, "enabled")
    result = bulk(
        registry,
        ExportImportDevice(id="fresh", import_mode="create"),
        ExportImportDevice(id="taken", import_mode="create"),
        ExportImportDevice(id="ghost", import_mode="update"),
        ExportImportDevice(id="doomed", import_mode="delete"),
        ExportImportDevice(id="off", import_mode="createOrUpdate", status="disabled"),
    )
    assert result.is_successful is False
    failed = {e.device_id: e.error_code for e in result.errors}
    assert failed == {"taken": "DeviceAlreadyExists", "ghost": "DeviceNotFound"}
    assert all(e.error_status for e in result.errors)

    ids = sorted(d.device_id for d in registry.get_devices())
    assert ids == ["fresh", "off", "taken"]
    assert registry.get_device("off").status == "disabled"


def test_registry_statistics_count_devices_by_status(registry):
    bulk(registry,
         ExportImportDevice(id="s1", import_mode="create"),
         ExportImportDevice(id="s2", import_mode="create", status="disabled"),
         ExportImportDevice(id="s3", import_mode="create"))
    stats = registry.get_device_registry_statistics()
    assert (stats.total_device_count, stats.enabled_device_count, stats.disabled_device_count) == (3, 2, 1)
    assert registry.get_service_statistics().connected_device_count == 0


def test_tags_written_by_update_twin_are_found_by_a_query(registry):
    for device_id in ("t1", "t2"):
        registry.create_device_with_sas(device_id, None, None, "enabled")
    updated = registry.update_twin("t2", Twin(tags={"ring": "canary", "floor": 3}))
    assert updated.tags == {"ring": "canary", "floor": 3}

    result = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.ring = 'canary'"))
    assert [row.device_id for row in result.items] == ["t2"]
    assert result.continuation_token is None


def test_a_malformed_query_is_refused_with_where_it_failed(registry):
    with pytest.raises(HttpOperationError) as excinfo:
        registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE"))
    assert excinfo.value.response.status_code == 400
    body = excinfo.value.response.json()
    assert body["Message"].startswith("ErrorCode:ArgumentInvalid;")
    assert "column" in body["Message"]


def test_the_cli_updates_tags_and_queries_every_page(hub, registry):
    result = bulk(registry, *[ExportImportDevice(id=f"cli-{i}", import_mode="create") for i in range(5)])
    assert result.is_successful

    twin = hub.cli_json("twin", "update", "cli-3", "--tags", '{"zone": "b"}')
    assert twin["tags"] == {"zone": "b"}
    assert registry.get_twin("cli-3").tags == {"zone": "b"}

    rows = hub.cli_json("query", "SELECT * FROM devices WHERE tags.zone = 'b'")
    assert [row["deviceId"] for row in rows] == ["cli-3"]
    every = hub.cli_json("query", "SELECT * FROM devices", "--page-size", "2")
    assert [row["deviceId"] for row in every] == [f"cli-{i}" for i in range(5)]
    top = hub.cli_json("query", "SELECT * FROM devices", "--page-size", "2", "--top", "3")
    assert len(top) == 3

    human = hub.run_cli(["query", "SELECT * FROM devices WHERE tags.zone = 'b'"]).stdout
    assert "DEVICE" in human and "cli-3" in human

    refused = hub.run_cli(["query", "SELECT * FROM devices WHERE"], check=False)
    assert refused.returncode != 0
    assert "400" in refused.stderr


def test_a_query_by_reported_property_finds_what_a_device_reported(hub, registry, clients):
    created = registry.create_device_with_sas("reporter", None, None, "enabled")
    registry.create_device_with_sas("quiet", None, None, "enabled")
    client = clients.open(hub, "reporter", created.authentication.symmetric_key.primary_key)
    client.patch_twin_reported_properties({"firmware": "1.2.3"})

    rows, _, _ = query_pages(registry, "SELECT * FROM devices WHERE properties.reported.firmware = '1.2.3'", 10)
    assert [row.device_id for row in rows] == ["reporter"]
    assert rows[0].connection_state == "Connected"
    assert registry.get_service_statistics().connected_device_count == 1

    counted = registry.query_iot_hub(QuerySpecification(query="SELECT COUNT() AS n FROM devices"))
    assert counted.type == "raw"
