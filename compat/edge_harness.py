"""Helpers of the edge runtime tests: a local registry with a test image, and `outpost edge run` daemons.

The container tests need the real Docker daemon and a local registry (Debian's docker-registry on 127.0.0.1:5000,
started here when it is not running). Under CI (CI=true) a missing Docker or registry fails the tests; elsewhere
they are skipped with a message.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Hub, outpost_bin, wait_for

REGISTRY = "127.0.0.1:5000"
IN_CI = os.environ.get("CI") == "true"


def need(condition: bool, why: str) -> None:
    """Fails under CI, skips elsewhere, when something the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    cp = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {cp.returncode}: {cp.stderr}")
    return cp


def docker_available() -> bool:
    return shutil.which("docker") is not None and docker("version", check=False, timeout=20).returncode == 0


def registry_answers() -> bool:
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_registry(work: Path) -> subprocess.Popen | None:
    """Starts Debian's docker-registry on 127.0.0.1:5000 unless a registry answers there already."""
    if registry_answers():
        return None
    binary = shutil.which("docker-registry")
    if binary is None:
        return None
    config = work / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "storage:\n  filesystem:\n    rootdirectory: " + str(work / "registry-data") + "\n"
        "http:\n  addr: " + REGISTRY + "\n"
        "log:\n  level: warn\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(registry_answers, 20, "the local registry to answer")
    return proc


def busybox_rootfs() -> bytes:
    """A root file system of a statically linked busybox: the test image is built FROM scratch around it."""
    busybox = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if Path(p).is_file()), None)
    need(busybox is not None, "the test image needs a static busybox (Debian's busybox-static)")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep", "env", "cat", "echo"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return out.getvalue()


def push_test_image(tag: str) -> str:
    """Imports the busybox root file system as an image and pushes it to the local registry."""
    image = f"{REGISTRY}/outpost-test/busybox:{tag}"
    subprocess.run(["docker", "import", "-", image], input=busybox_rootfs(), check=True, capture_output=True,
                   timeout=120)
    docker("push", image)
    return image


class Edge:
    """One `outpost edge run` daemon for an edge device of `hub`."""

    def __init__(self, hub: Hub, device_id: str, work: Path, runtime: str, network: str, host: str,
                 extra: str = "") -> None:
        self.hub = hub
        self.host = host
        self.device_id = device_id
        self.data_dir = work / "edge-data"
        self.config = work / "edge.toml"
        self.log_path = work / "edge.log"
        self.runtime = runtime
        self.network = network
        self.prefix = f"{device_id}-"
        self.proc: subprocess.Popen | None = None
        created = hub.cli_json("device", "create", device_id, "--edge")
        key = created["authentication"]["symmetricKey"]["primaryKey"]
        runtime_section = f'type = "{runtime}"\n'
        if runtime == "docker":
            runtime_section += f'network = "{network}"\ncontainer_prefix = "{self.prefix}"\n'
        self.config.write_text(
            f'connection_string = "HostName={hub.host};DeviceId={device_id};SharedAccessKey={key}"\n'
            f'hub_ca = "{hub.ca_path}"\n'
            f"hub_https_port = {hub.https_port}\n"
            f'data_dir = "{self.data_dir}"\n'
            f'hostname = "{host}"\n'
            f'listen_address = "{host}"\n'
            f"{extra}"
            f"\n[runtime]\n{runtime_section}"
        )

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(outpost_bin()), "edge", "run", "--config", str(self.config)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env={**os.environ, "RUST_BACKTRACE": "1"})
        log.close()
        wait_for(lambda: (self.data_dir / "management.sock").exists() or self.proc.poll() is not None, 30,
                 "the edge daemon's management socket")
        from harness import port_open
        wait_for(lambda: port_open(self.host, 8883) or self.proc.poll() is not None, 30, "the edge hub's MQTT port")
        assert self.proc.poll() is None, f"outpost edge run exited:\n{self.log_tail()}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cp = subprocess.run([str(outpost_bin()), "edge", *args, "--config", str(self.config)], capture_output=True,
                            text=True, timeout=30)
        if check and cp.returncode != 0:
            raise AssertionError(f"outpost edge {' '.join(args)} exited {cp.returncode}: {cp.stderr}")
        return cp

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "pki" / "ca.pem"

    def stats(self) -> dict:
        return json.loads(self.cli("stats").stdout)

    def wait_online(self, timeout: float = 60, what: str = "the edge's link to the hub to be up") -> None:
        """Waits until the edge hub says its link to the hub is up: before that it knows only the identities it
        cached, and refuses a module or device created at the hub since."""
        wait_for(lambda: self.stats()["online"], timeout, what)

    def container(self, module: str) -> str:
        return f"{self.prefix}{module}"

    def inspect(self, module: str) -> dict | None:
        cp = docker("inspect", self.container(module), check=False)
        return json.loads(cp.stdout)[0] if cp.returncode == 0 else None

    def cleanup(self) -> None:
        self.stop()
        # Process modules stop with the daemon on SIGTERM, but a SIGKILLed daemon leaves them orphaned: end them here.
        processes = self.data_dir / "processes"
        for pid_file in processes.glob("*/pid") if processes.exists() else []:
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ValueError, OSError):
                pass
        if self.runtime == "docker":
            ids = docker("ps", "-aq", "--filter", f"label=net.outpost.device={self.device_id}", check=False).stdout.split()
            if ids:
                docker("rm", "-f", *ids, check=False)
            docker("network", "rm", self.network, check=False)


def deployment(modules: dict, schema: str = "1.1") -> dict:
    """An Azure IoT Edge deployment manifest with the given user modules."""
    return {"modulesContent": {
        "$edgeAgent": {"properties.desired": {
            "schemaVersion": schema,
            "runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25", "loggingOptions": ""}},
            "systemModules": {
                "edgeAgent": {"type": "docker", "settings": {"image": "outpost/agent:1", "createOptions": "{}"}},
                "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                            "settings": {"image": "outpost/hub:1", "createOptions": "{}"}}},
            "modules": modules}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {},
                                            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}}}


def reported_modules(hub: Hub, device_id: str) -> dict:
    twin = hub.registry().get_module_twin(device_id, "$edgeAgent")
    return (twin.properties.reported or {}).get("modules") or {}


def wait_reported(hub: Hub, device_id: str, predicate, timeout: float, what: str):
    """Waits until the `$edgeAgent` reported properties satisfy `predicate`; returns them."""
    last = {}

    def check():
        nonlocal last
        twin = hub.registry().get_module_twin(device_id, "$edgeAgent")
        last = twin.properties.reported or {}
        return last if predicate(last) else None

    try:
        return wait_for(check, timeout, what, interval=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}; last reported: {json.dumps(last)[:2000]}") from None
