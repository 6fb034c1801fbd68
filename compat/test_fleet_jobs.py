"""Jobs (`/jobs/v2`) through the unmodified `IoTHubJobManager` of azure-iot-hub 2.7.0: a twin update and a device
method over the devices a query condition selects (the method answered by a device on azure-iot-device),
`get_scheduled_job` until completed with its device statistics, cancelling, listing, refusals; and the same
through `outpost job`. On SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from azure.iot.device import MethodResponse
from azure.iot.hub import IoTHubJobManager
from azure.iot.hub.models import CloudToDeviceMethod, JobRequest, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from harness import set_handler, wait_for

pytestmark = [
    pytest.mark.docker_free,  # the real SDKs and the outpost binary only: no Docker
    pytest.mark.hub_setups("sqlite", "postgres"),
]

ENDED = ("completed", "failed", "cancelled")


def job_manager(hub) -> IoTHubJobManager:
    return IoTHubJobManager.from_connection_string(hub.connection_string)


def tagged_device(registry, device_id: str, tags: dict) -> str:
    """Creates a device with `tags`; its primary key."""
    key = registry.create_device_with_sas(device_id, "", "", "enabled").authentication.symmetric_key.primary_key
    registry.update_twin(device_id, Twin(tags=tags), "*")
    return key


def ended(manager, job_id: str, timeout: float = 30):
    """Polls `get_scheduled_job` until the job has ended."""
    return wait_for(lambda: (job := manager.get_scheduled_job(job_id)).status in ENDED and job,
                    timeout, f"job {job_id} to end", interval=0.2)


def statistics(job) -> tuple:
    s = job.device_job_statistics
    return (s.device_count, s.succeeded_count, s.failed_count, s.running_count, s.pending_count)


def test_twin_job_updates_the_devices_a_tag_selects(hub, registry):
    for device_id, site in [("north-1", "north"), ("north-2", "north"), ("south-1", "south")]:
        tagged_device(registry, device_id, {"site": site})
    manager = job_manager(hub)
    request = JobRequest(
        job_id="fan-on", type="scheduleUpdateTwin", query_condition="tags.site = 'north'",
        update_twin=Twin(etag="*", tags={"fanned": True}, properties=TwinProperties(desired={"fan": True})),
        start_time=datetime.now(timezone.utc), max_execution_time_in_seconds=60)

    created = manager.create_scheduled_job("fan-on", request)
    assert created.job_id == "fan-on"
    assert created.type == "scheduleUpdateTwin"
    assert created.status in ("queued", "running", "completed")

    job = ended(manager, "fan-on")
    assert job.status == "completed"
    assert statistics(job) == (2, 2, 0, 0, 0)
    assert job.end_time is not None and job.created_time is not None
    for device_id in ("north-1", "north-2"):
        twin = registry.get_twin(device_id)
        assert twin.properties.desired["fan"] is True
        assert twin.tags == {"site": "north", "fanned": True}
    assert "fan" not in registry.get_twin("south-1").properties.desired


def test_method_job_reaches_the_connected_device_and_counts_the_offline_one_as_failed(hub, registry, clients):
    online_key = tagged_device(registry, "online", {"role": "pump"})
    tagged_device(registry, "offline", {"role": "pump"})
    client = clients.open(hub, "online", online_key)
    seen = []

    def handler(request):
        seen.append(request)
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": True}))

    set_handler(client, "on_method_request_received", handler)
    manager = job_manager(hub)
    request = JobRequest(
        job_id="reboot-pumps", type="scheduleDeviceMethod", query_condition="tags.role = 'pump'",
        cloud_to_device_method=CloudToDeviceMethod(method_name="reboot", payload={"delay": 1},
                                                   response_timeout_in_seconds=10, connect_timeout_in_seconds=0),
        max_execution_time_in_seconds=60)

    manager.create_scheduled_job("reboot-pumps", request)
    job = ended(manager, "reboot-pumps")

    assert job.status == "completed"
    assert statistics(job) == (2, 1, 1, 0, 0)
    assert job.cloud_to_device_method.method_name == "reboot"
    assert [(r.name, r.payload) for r in seen] == [("reboot", {"delay": 1})]


def test_a_scheduled_job_can_be_cancelled_and_jobs_are_listed_by_type_and_status(hub, registry):
    tagged_device(registry, "d1", {"site": "north"})
    manager = job_manager(hub)
    later = JobRequest(
        job_id="later", type="scheduleUpdateTwin", query_condition="tags.site = 'north'",
        update_twin=Twin(etag="*", properties=TwinProperties(desired={"late": True})),
        start_time=datetime.now(timezone.utc) + timedelta(hours=1), max_execution_time_in_seconds=60)
    assert manager.create_scheduled_job("later", later).status == "scheduled"
    now = JobRequest(
        job_id="now", type="scheduleUpdateTwin", query_condition="tags.site = 'north'",
        update_twin=Twin(etag="*", properties=TwinProperties(desired={"now": True})))
    manager.create_scheduled_job("now", now)
    ended(manager, "now")

    cancelled = manager.cancel_scheduled_job("later")
    assert cancelled.status == "cancelled"
    assert manager.get_scheduled_job("later").status == "cancelled"
    assert "late" not in registry.get_twin("d1").properties.desired

    def ids(result) -> set[str]:
        return {item["jobId"] for item in result.items}

    assert ids(manager.query_scheduled_jobs(None, None)) == {"later", "now"}
    assert ids(manager.query_scheduled_jobs("scheduleUpdateTwin", "cancelled")) == {"later"}
    assert ids(manager.query_scheduled_jobs(None, "completed")) == {"now"}
    assert ids(manager.query_scheduled_jobs("scheduleDeviceMethod", None)) == set()


def test_invalid_jobs_are_refused_with_400_and_not_stored(hub, registry):
    manager = job_manager(hub)
    bad = [
        JobRequest(job_id="bad", type="scheduleUpdateTwin", query_condition="tags.site = ",
                   update_twin=Twin(properties=TwinProperties(desired={"a": 1}))),
        JobRequest(job_id="bad", type="scheduleDeviceMethod", query_condition="tags.site = 'x'",
                   cloud_to_device_method=CloudToDeviceMethod(payload={})),
        JobRequest(job_id="bad", type="export", query_condition="tags.site = 'x'"),
    ]
    for request in bad:
        with pytest.raises(HttpOperationError) as e:
            manager.create_scheduled_job("bad", request)
        assert e.value.response.status_code == 400, request
    with pytest.raises(HttpOperationError) as e:
        manager.get_scheduled_job("bad")
    assert e.value.response.status_code == 404
    assert manager.query_scheduled_jobs(None, None).items == []


def test_jobs_from_the_cli(hub, registry):
    tagged_device(registry, "c1", {"site": "west"})
    created = hub.cli_json("job", "create", "cli-twin", "--type", "twin", "--query-condition", "tags.site = 'west'",
                           "--twin-patch", '{"mode": "eco"}', "--max-execution-time", "60")
    assert created["jobId"] == "cli-twin" and created["type"] == "scheduleUpdateTwin"
    job = wait_for(lambda: (j := hub.cli_json("job", "show", "cli-twin"))["status"] in ENDED and j,
                   30, "the CLI's job to end", interval=0.2)
    assert job["status"] == "completed"
    assert job["deviceJobStatistics"]["succeededCount"] == 1
    assert registry.get_twin("c1").properties.desired["mode"] == "eco"

    start = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    hub.cli_json("job", "create", "cli-method", "--type", "method", "--query-condition", "tags.site = 'west'",
                 "--method", "reboot", "--payload", '{"now": false}', "--start-time", start)
    assert hub.cli_json("job", "cancel", "cli-method")["status"] == "cancelled"
    listed = hub.cli_json("job", "list")
    assert {j["jobId"]: j["status"] for j in listed} == {"cli-twin": "completed", "cli-method": "cancelled"}
    refused = hub.run_cli(["job", "create", "cli-bad", "--type", "method", "--query-condition", "tags.x = 1"],
                          check=False)
    assert refused.returncode != 0 and "--method" in refused.stderr
