"""Fixtures: a private dbus-daemon, the real accelgated on simulated hardware, and accelctl
run as non-root service users that hold the roles of policy/50-openstack.toml.

Must run as root (it creates users and runs the daemon as root) with dbus-daemon, busctl,
setpriv and minisign installed (scripts/install-test-deps) and the binaries built
(`cargo build --bins`); anything missing fails the run with a message saying so.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from accelgate_openstack.accelctl import Accelctl

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("ACCELGATE_BIN_DIR", REPO / "target" / "debug"))
ACCELGATED = BIN_DIR / "accelgated"
ACCELCTL = BIN_DIR / "accelctl"

CYBORG_USER = "ag-cyborg"
IRONIC_USER = "ag-ironic"
LOCAL_TENANT = "ag-os-tenant"
USERS = (CYBORG_USER, IRONIC_USER, LOCAL_TENANT)
# The groups policy/simulated.toml names (crates/testkit creates the same).
GROUPS = ("accel-tenants", "accel-operators", "accel-admins")

# The lock file tests/common/mod.rs takes too, so the Rust tests and these never run
# useradd at the same time.
USERS_LOCK = "/tmp/accelgate-test-users.lock"


def pytest_sessionstart(session):
    problems = []
    if os.geteuid() != 0:
        problems.append(
            "these tests must run as root: they create users and run accelgated as root"
        )
    for tool, package in (
        ("dbus-daemon", "dbus-daemon"),
        ("busctl", "systemd"),
        ("setpriv", "util-linux"),
        ("useradd", "passwd"),
        ("minisign", "minisign"),
    ):
        if shutil.which(tool) is None:
            problems.append("%s is required but not installed (Debian package %s)" % (tool, package))
    for binary in (ACCELGATED, ACCELCTL):
        if not binary.exists():
            problems.append("%s is missing: run `cargo build --bins` first" % binary)
    if problems:
        pytest.exit("\n".join(problems), returncode=1)


def ensure_users():
    with open(USERS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for group in GROUPS:
            if subprocess.run(["getent", "group", group], capture_output=True).returncode != 0:
                subprocess.run(["groupadd", "--system", group], check=True)
        for user in USERS:
            if subprocess.run(["getent", "passwd", user], capture_output=True).returncode != 0:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                    check=True,
                )


def as_user(user):
    """The accelctl command prefix that runs accelctl as ``user`` with its groups, no caps."""
    return [
        "setpriv",
        "--reuid=%s" % user,
        "--regid=%s" % user,
        "--init-groups",
        "--inh-caps=-all",
        "--",
        str(ACCELCTL),
    ]


class Stack:
    """A private bus and accelgated on the standard simulated host, with the simulated policy
    and the OpenStack drop-in (service users renamed to the test users)."""

    def __init__(self):
        ensure_users()
        self.dir = Path(tempfile.mkdtemp(prefix="accelgate-openstack-"))
        os.chmod(self.dir, 0o755)
        self.sim = self.dir / "sim"
        self.state = self.dir / "state"
        policy = self.dir / "policy"
        (policy / "policy.d").mkdir(parents=True)
        shutil.copy(REPO / "policy" / "simulated.toml", policy / "policy.toml")
        drop_in = (REPO / "integrations/openstack/policy/50-openstack.toml").read_text()
        drop_in = drop_in.replace('users = ["cyborg"]', 'users = ["%s"]' % CYBORG_USER)
        drop_in = drop_in.replace('users = ["ironic"]', 'users = ["%s"]' % IRONIC_USER)
        assert CYBORG_USER in drop_in and IRONIC_USER in drop_in, "drop-in roles changed"
        (policy / "policy.d" / "50-openstack.toml").write_text(drop_in)
        self.bus, self.address = self._start_bus()
        self.daemon = None
        self.log = self.dir / "daemon.log"
        try:
            self.start_daemon()
        except BaseException:
            self.stop()
            raise

    def _start_bus(self):
        socket = self.dir / "bus"
        template = (REPO / "scripts" / "private-bus.conf.in").read_text()
        conf = self.dir / "bus.conf"
        conf.write_text(
            template.replace("@SOCKET@", str(socket)).replace(
                "@PROJECT_POLICY@", str(REPO / "dbus" / "org.accelgate.Accel1.conf")
            )
        )
        proc = subprocess.Popen(
            ["dbus-daemon", "--config-file=%s" % conf, "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=open(self.dir / "bus.log", "w"),
            text=True,
        )
        address = proc.stdout.readline().strip()
        if not address:
            proc.kill()
            raise RuntimeError("dbus-daemon printed no address; see %s" % (self.dir / "bus.log"))
        os.chmod(socket, 0o777)
        return proc, address

    def start_daemon(self):
        # polkit is off: no polkitd serves this bus (the Rust tests cover that gate); role
        # policy, caller capabilities and device limits decide as in production.
        self.daemon = subprocess.Popen(
            [
                str(ACCELGATED),
                "--simulate", str(self.sim),
                "--bus", self.address,
                "--policy", str(self.dir / "policy"),
                "--state-dir", str(self.state),
                "--no-polkit",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "a"),
            env=dict(os.environ, ACCELGATE_LOG="info"),
        )
        deadline = time.monotonic() + 20
        while True:
            ready = subprocess.run(
                ["busctl", "--address", self.address, "status", "org.accelgate.Accel1"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if self.daemon.poll() is not None:
                raise RuntimeError("accelgated exited early:\n" + self.log.read_text())
            if time.monotonic() > deadline:
                raise RuntimeError("accelgated not ready after 20 s:\n" + self.log.read_text())
            time.sleep(0.02)

    def stop_daemon(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(5)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def stop(self):
        self.stop_daemon()
        self.bus.kill()
        self.bus.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def accelctl(self, user):
        """An Accelctl that runs as ``user`` ("root" runs it directly) on this stack's bus."""
        command = [str(ACCELCTL)] if user == "root" else as_user(user)
        return Accelctl(command, bus=self.address, timeout=120)

    def root(self, *args):
        """``accelctl --json ARGS`` as root (admin in the simulated policy)."""
        return self.accelctl("root").run(*args)

    def audit(self):
        path = self.state / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_file(self, name, data):
        path = self.dir / name
        path.write_bytes(data)
        os.chmod(path, 0o644)
        return path


@pytest.fixture
def stack():
    s = Stack()
    yield s
    s.stop()
