"""Fixtures of the conformance suite: a fresh `outpost hub serve` per test on its own loopback address,
the official service SDK pointed at it, and device/module clients that are shut down after the test.

Run with `.venv/bin/pytest compat -q` (OUTPOST_BIN selects the binary; default target/debug/outpost).
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pytest

from edge_harness import Edge
from harness import (Clients, Hub, LoopbackPool, Postgres, ReplicatedHub, binary_has_database_flag, free_port,
                     hub_on_standard_ports, outpost_bin, run_with_timeout)

# A hung SDK call must fail its test, not the whole CI run: every test (setup, call, teardown) gets this long.
TEST_TIMEOUT_SECS = int(os.environ.get("OUTPOST_COMPAT_TEST_TIMEOUT", "120"))
# Last resort if something wedges outside a test: dump every thread's stack and exit non-zero. The suite takes
# 18-25 minutes on two busy cores; CI allows 90 for everything.
SESSION_TIMEOUT_SECS = int(os.environ.get("OUTPOST_COMPAT_SESSION_TIMEOUT", "3000"))
# Where that dump goes: the session's real stderr. pytest's capture holds fd 2 while a test runs, and a dump
# written there would be discarded with the capture when the process exits.
_session_stderr = None


# The hub set-ups (issue 10): embedded SQLite; one replica on PostgreSQL; three replicas on PostgreSQL behind
# HAProxy. A module (or test) opts in with `pytest.mark.hub_setups(...)` (no names: all three); everything else
# runs on SQLite only. OUTPOST_COMPAT_SETUPS=sqlite,postgres narrows a run.
HUB_SETUPS = ("sqlite", "postgres", "replicas")


def pytest_configure(config):
    config.addinivalue_line("markers", "hub_setups(*names): run the test's `hub`/`hub_factory` on each named "
                                       "set-up (sqlite, postgres, replicas; none named: all three)")


def pytest_generate_tests(metafunc):
    if "hub_setup" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("hub_setups")
    if marker is None:
        return
    names = [n for n in (marker.args or HUB_SETUPS)]
    unknown = set(names) - set(HUB_SETUPS)
    assert not unknown, f"unknown hub set-ups {unknown}"
    wanted = os.environ.get("OUTPOST_COMPAT_SETUPS")
    if wanted:
        names = [n for n in names if n in wanted.split(",")]
    metafunc.parametrize("hub_setup", names, indirect=True)


def real_stderr(config):
    """A file on the stderr the session started with (the saved fd of pytest's global capture), else fd 2."""
    capture = getattr(config.pluginmanager.getplugin("capturemanager"), "_global_capturing", None)
    saved = getattr(getattr(capture, "err", None), "targetfd_save", None)
    return os.fdopen(os.dup(saved if isinstance(saved, int) else 2), "w")


def pytest_sessionstart(session):
    global _session_stderr
    _session_stderr = real_stderr(session.config)
    print(f"compat: the session ends with a stack dump after {SESSION_TIMEOUT_SECS} s", file=_session_stderr,
          flush=True)
    faulthandler.dump_traceback_later(SESSION_TIMEOUT_SECS, exit=True, file=_session_stderr)


def pytest_sessionfinish(session, exitstatus):
    faulthandler.cancel_dump_traceback_later()


class TestTimeout(AssertionError):
    """The test ran past TEST_TIMEOUT_SECS."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    def on_alarm(signum, frame):
        raise TestTimeout(f"{item.nodeid} ran longer than {TEST_TIMEOUT_SECS} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT_SECS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the tail of each hub's log to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, hub in enumerate(getattr(item, "_outpost_hubs", [])):
            report.sections.append((f"outpost hub #{i} log ({hub.host})", hub.log_tail(80)))


@pytest.fixture(scope="session")
def binary() -> Path:
    path = outpost_bin()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"outpost binary not found at {path}: build it (cargo build --workspace --bins) "
                    f"or set OUTPOST_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def loopback() -> LoopbackPool:
    return LoopbackPool()


@pytest.fixture
def hub_setup(request) -> str:
    """The set-up of this test's hubs: `sqlite` unless the test is parametrized by `hub_setups`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """One throwaway PostgreSQL server for the session (scripts/postgres.sh), started by the first test that
    needs it and stopped (and its directory removed) at the end; every hub set-up gets a fresh database on it.

    Its directory is not under pytest's temporary tree: as root the server runs as `nobody`, and every pytest
    session on the machine resets /tmp/pytest-of-root to 0700, which would cut a running server off its files."""
    work = Path(tempfile.mkdtemp(prefix="outpost-compat-pg-"))
    server = Postgres(work / "pg")
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def hub_factory(binary, loopback, tmp_path, monkeypatch, request, hub_setup):
    """Starts hubs (each on a new loopback address and data dir; on PostgreSQL each on a fresh database), in the
    test's set-up unless `setup=` says otherwise; all are stopped after the test."""
    hubs: list[Hub] = []
    databases: list[tuple[Postgres, str]] = []
    request.node._outpost_hubs = hubs

    def start(name: str = "hub", setup: str | None = None) -> Hub:
        setup = setup or hub_setup
        if setup == "sqlite":
            host = loopback.next()
            data_dir = tmp_path / f"{name}-data"
            data_dir.mkdir()
            hub = Hub(data_dir, host, free_port(host), tmp_path / f"{name}.log")
        else:
            if not binary_has_database_flag(binary):
                pytest.skip(f"{binary} has no `hub serve --database` (PostgreSQL engine not in this build)")
            pg = request.getfixturevalue("postgres")
            database = pg.create_database()
            databases.append((pg, database))
            if setup == "postgres":
                host = loopback.next()
                data_dir = tmp_path / f"{name}-data"
                data_dir.mkdir()
                hub = Hub(data_dir, host, free_port(host), tmp_path / f"{name}.log", database=database)
            elif setup == "replicas":
                work = tmp_path / name
                work.mkdir()
                hub = ReplicatedHub(work, loopback, database)
            else:
                raise ValueError(f"unknown hub set-up {setup!r}")
        hubs.append(hub)
        hub.start()
        # The service SDK (requests, via msrest) trusts the hub's CA through this variable.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(hub.ca_path))
        return hub

    yield start
    for hub in hubs:
        try:
            hub.stop(timeout=5)
        except Exception:  # noqa: BLE001 - teardown must reach every hub
            for proc in [h.proc for h in getattr(hub, "replicas", [hub])] + [getattr(hub, "haproxy", None)]:
                if proc is not None and proc.poll() is None:
                    proc.kill()
    for pg, database in databases:
        try:
            pg.drop_database(database)
        except Exception:  # noqa: BLE001 - a leftover database only costs disk
            pass


@pytest.fixture
def hub(hub_factory) -> Hub:
    return hub_factory()


@pytest.fixture
def registry(hub):
    return hub.registry()


@pytest.fixture
def clients():
    c = Clients()
    yield c
    c.close_all()


@pytest.fixture
def edge(hub, tmp_path, loopback):
    """An `outpost edge run` daemon for process modules on its own loopback address, under `hub` (a test file
    that needs another kind defines its own `edge`)."""
    daemon = Edge(hub, f"edge-{uuid.uuid4().hex[:6]}", tmp_path, "process", "unused", loopback.next())
    yield daemon
    daemon.cleanup()


@pytest.fixture
def amqp_hub(binary, loopback, tmp_path, monkeypatch, request):
    """A hub with AMQP on 5671 and HTTPS on 443 of its own loopback address: the ports the service SDKs dial
    (azure-iot-hub's C2D client takes the AMQP host from `HostName`, which names no port when HTTPS is on 443)."""
    yield from hub_on_standard_ports(loopback, tmp_path, monkeypatch, request, amqp=True)
