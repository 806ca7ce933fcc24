"""The set-up scripts' shared functions (scripts/lib/setup.sh), run by bash as the scripts do."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.services import free_port, wait_for_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
LIB = REPO / "scripts" / "lib" / "setup.sh"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def setup_sh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash after sourcing the set-up functions."""
    return subprocess.run(
        ["bash", "-c", f'set -Eeuo pipefail; . "{LIB}"; {script}'],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


@contextmanager
def lock_held(path: Path, seconds: float) -> Iterator[None]:
    """Another process holding ``path`` with an fcntl lock, as apt and dpkg hold theirs."""
    command = [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            yield
        finally:
            holder.kill()


def test_setup_waits_for_the_package_lock_and_goes_on(tmp_path: Path) -> None:
    """A lock held for a few seconds by another install: the script says so, waits, goes on."""
    lock = tmp_path / "lock-frontend"
    with lock_held(lock, 6):
        done = setup_sh(f'wait_for_locks "{lock}"; echo went-on', APT_LOCK_WAIT_S="60")
    assert done.returncode == 0, done.stderr
    assert "another package install is running" in done.stdout
    assert f"{sys.executable}" in done.stdout  # who holds it
    assert "the package manager is free again" in done.stdout
    assert done.stdout.strip().endswith("went-on")


def test_setup_gives_up_on_a_lock_held_too_long_with_one_line_saying_what_to_do(
    tmp_path: Path,
) -> None:
    """Past the bound, the script stops with one line: what holds it up and what to do."""
    lock = tmp_path / "lock-frontend"
    with lock_held(lock, 60):
        done = setup_sh(f'wait_for_locks "{lock}"; echo went-on', APT_LOCK_WAIT_S="2")
    assert done.returncode == 1
    assert "went-on" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert "set-up failed: the package manager stayed locked for 2 s" in last
    assert "let it finish (or stop it), then run this script again" in last


def test_a_failing_step_ends_with_what_to_do() -> None:
    """Any command failing inside a step ends the script with the step's advice, on one line."""
    done = setup_sh('trap on_failure ERR; step "doing a thing" "do the fix"; false; echo after')
    assert done.returncode == 1
    assert "after" not in done.stdout
    assert done.stderr.strip().splitlines()[-1].endswith("set-up failed: doing a thing: do the fix")


def test_a_port_nobody_listens_on_has_no_broker_configuration() -> None:
    """Asking which configuration a free port's broker runs is an empty answer, not a failure."""
    done = setup_sh(f'trap on_failure ERR; echo "[$(listener_config {free_port()})]"')
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "[]", "")


@contextmanager
def beside_a_foreign_broker(tmp_path: Path, port: int) -> Iterator[tuple[Path, Path]]:
    """A stock Mosquitto on ``port``, and a checkout to set up: (its config, the checkout).

    Stops both brokers on the way out: the foreign one and citytel's own, if one started.
    """
    foreign_conf = tmp_path / "stock.conf"
    foreign_conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    foreign = subprocess.Popen([MOSQUITTO, "-c", str(foreign_conf)], stderr=subprocess.DEVNULL)
    root = tmp_path / "checkout"
    (root / "deploy").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "mosquitto.conf", root / "deploy" / "mosquitto.conf")
    try:
        wait_for_port(port)
        yield foreign_conf, root
    finally:
        foreign.terminate()
        foreign.wait(timeout=10)
        pid_file = root / "var" / "mosquitto" / "mosquitto.pid"
        deadline = time.monotonic() + 5
        while (root / "var" / "mqtt-url").exists() and not pid_file.exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


def test_a_foreign_broker_is_not_used_and_citytels_own_runs_beside_it(tmp_path: Path) -> None:
    """A broker without citytel's configuration on the port: the demo gets its own broker."""
    port = free_port()
    with beside_a_foreign_broker(tmp_path, port) as (foreign_conf, root):
        done = setup_sh(f'ensure_broker "{MOSQUITTO}" "{root}" {port}; echo "port $MQTT_PORT"')
        assert done.returncode == 0, done.stderr
        assert f"port {port} is held by a broker that does not run citytel's" in done.stdout
        assert str(foreign_conf) in done.stdout
        url = (root / "var" / "mqtt-url").read_text().strip()
        own = int(url.rsplit(":", 1)[1])
        assert own != port
        assert f"citytel's own broker (deploy/mosquitto.conf) runs on port {own}" in done.stdout
        assert done.stdout.strip().endswith(f"port {own}")
        assert setup_sh(f"runs_citytel_config {own}").returncode == 0
        assert setup_sh(f"runs_citytel_config {port}").returncode == 1
        again = setup_sh(f'ensure_broker "{MOSQUITTO}" "{root}" {port}; echo "port $MQTT_PORT"')
        assert again.stdout.strip().endswith(f"port {own}"), "a second run reuses citytel's broker"


def test_a_port_taken_while_citytels_broker_starts_moves_it_to_the_next(tmp_path: Path) -> None:
    """The next port held by a socket that does not listen (seen under parallel tests): skipped."""
    port = free_port()
    while any(_in_use(p) for p in (port + 1, port + 2, port + 3)):
        port = free_port()
    # Bound, not listening: the set-up's own check cannot see it; only binding fails.
    with socket.socket() as blocker, beside_a_foreign_broker(tmp_path, port) as (_, root):
        blocker.bind(("127.0.0.1", port + 1))
        done = setup_sh(f'ensure_broker "{MOSQUITTO}" "{root}" {port}; echo "port $MQTT_PORT"')
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith(f"port {port + 2}")


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
