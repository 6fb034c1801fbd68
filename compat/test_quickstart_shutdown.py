"""`outpost quickstart` leaves nothing behind: Ctrl-C (SIGINT) stops every module it started, containers
included, and run from a checkout it writes nothing into it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from edge_harness import docker, docker_available, need
from harness import REPO_ROOT, outpost_bin, port_open, wait_for

IMAGES = ["127.0.0.1:5000/outpost/simulated-temperature-sensor:0.1.0", "127.0.0.1:5000/outpost/filter:0.1.0"]


def run_until_readings(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    for host in ("127.0.0.2", "127.0.0.3"):
        assert not port_open(host, 8883), f"{host}:8883 is taken; the quickstart needs it"
    proc = subprocess.Popen([str(outpost_bin()), "quickstart", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("reading"):
            return proc
    proc.kill()
    raise AssertionError("no reading from the quickstart:\n" + "\n".join(lines) + proc.stderr.read()[-3000:])


def interrupt(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the quickstart did not stop within 60 s of Ctrl-C") from None
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    wait_for(lambda: not port_open("127.0.0.3", 8883), 10, "the edge hub to stop")


def module_processes() -> str:
    names = "|".join(str(outpost_bin().with_name(m)) for m in ("filter", "simulated-temperature-sensor"))
    return subprocess.run(["pgrep", "-af", names], capture_output=True, text=True).stdout.strip()


def test_ctrl_c_stops_the_process_modules_and_the_checkout_stays_clean(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    # The default data directory is in the temporary directory, which TMPDIR moves for the test (a short path:
    # the workload sockets inside must fit a Unix socket address).
    temporary = Path(tempfile.mkdtemp(prefix="qs-", dir="/tmp"))
    try:
        proc = run_until_readings(["--processes"], checkout, {**os.environ, "TMPDIR": str(temporary)})
        try:
            interrupt(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert module_processes() == "", "a sample module is still running after Ctrl-C"
        assert list(checkout.iterdir()) == [], f"the quickstart wrote into its working directory: {list(checkout.iterdir())}"
        assert (temporary / "outpost-quickstart" / "hub").is_dir()
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def quickstart_containers() -> list[str]:
    return docker("ps", "-aq", "--filter", "name=outpost-quickstart-").stdout.split()


def test_ctrl_c_removes_the_module_containers(tmp_path):
    need(docker_available(), "the Docker daemon is not reachable")
    if not all(docker("image", "inspect", image, check=False).returncode == 0 for image in IMAGES):
        # A static release build of the two modules: longer than the per-test alarm allows, so it is re-armed.
        signal.alarm(1500)
        built = subprocess.run([str(REPO_ROOT / "scripts" / "build-module-images.sh")], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=1200)
        need(built.returncode == 0, f"the sample module images could not be built: {built.stderr[-2000:]}")
    assert quickstart_containers() == [], "quickstart containers exist before the test"
    proc = run_until_readings(["--data-dir", str(tmp_path / "qs")], tmp_path, dict(os.environ))
    try:
        assert len(quickstart_containers()) == 2, "the quickstart did not run its modules as containers"
    finally:
        interrupt(proc)
    left = quickstart_containers()
    if left:
        docker("rm", "-f", *left, check=False)
    assert left == [], f"{len(left)} module containers left after Ctrl-C"
    assert module_processes() == ""
