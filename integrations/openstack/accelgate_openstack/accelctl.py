"""Runs ``accelctl --json`` for the OpenStack adapters and turns its answers into Python.

The adapters hold no privilege of their own: every request goes through accelctl to
accelgated, which decides it against its role policy. This module knows accelctl's
contract only: ``--json`` output on stdout, one ``accelctl: <what>: <Kind>: <message>``
line on stderr when a command fails, and the exit codes (0 ok, 1 error, 2 usage,
3 not authorized, 4 not found).
"""

import json
import logging
import os
import pty
import re
import subprocess
import threading

LOG = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_NOT_AUTHORIZED = 3
EXIT_NOT_FOUND = 4

# The D-Bus error kinds of accelgated (src/error.rs), as accelctl prints them.
ERROR_KINDS = (
    "NotAuthorized",
    "NotFound",
    "InvalidArgument",
    "Busy",
    "Locked",
    "VerificationFailed",
    "Cancelled",
    "Failed",
)
_KIND_RE = re.compile(r": (%s): " % "|".join(ERROR_KINDS))
# The end of accelctl's progress bar: "label [#####.....]  42%".
_PERCENT_RE = re.compile(r"\]\s*(\d{1,3})%\s*$")


class AccelctlError(Exception):
    """A command that accelctl or accelgated refused or failed.

    ``kind`` is accelgated's error kind (``NotAuthorized``, ``VerificationFailed``, ...) when
    the daemon answered, else ``Usage``, ``Unreachable`` or ``Error``.
    """

    def __init__(self, args, kind, message, exit_code=None):
        super().__init__("accelctl %s: %s: %s" % (" ".join(args), kind, message))
        self.args_run = list(args)
        self.kind = kind
        self.message = message
        self.exit_code = exit_code


def _kind_of(exit_code, stderr):
    if exit_code == EXIT_NOT_AUTHORIZED:
        return "NotAuthorized"
    if exit_code == EXIT_NOT_FOUND:
        return "NotFound"
    match = _KIND_RE.search(stderr)
    if match:
        return match.group(1)
    if exit_code == EXIT_USAGE:
        return "Usage"
    if "org.freedesktop.DBus.Error" in stderr or "cannot connect" in stderr:
        return "Unreachable"
    return "Error"


class Accelctl:
    """One configured accelctl.

    :param command: the argv prefix that runs accelctl, e.g. ``["accelctl"]`` or
        ``["setpriv", "--reuid=ironic", "--regid=ironic", "--init-groups", "--",
        "/usr/bin/accelctl"]`` for an agent that runs as root but should act with the
        service identity's role only.
    :param bus: a D-Bus address (``unix:path=...``), ``system``, or None for accelctl's
        default (``ACCELGATE_BUS`` or the system bus).
    :param timeout: seconds one command may take before it is abandoned.
    """

    def __init__(self, command=("accelctl",), bus=None, timeout=600):
        if isinstance(command, str):
            command = [command]
        self.command = list(command)
        if not self.command:
            raise ValueError("the accelctl command is empty")
        self.bus = bus
        self.timeout = timeout

    def _argv(self, args):
        argv = self.command + ["--json"]
        if self.bus:
            argv += ["--bus", self.bus]
        return argv + list(args)

    def run(self, *args, timeout=None):
        """Runs ``accelctl --json ARGS`` and returns its parsed JSON output."""
        argv = self._argv(args)
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except FileNotFoundError as e:
            raise AccelctlError(args, "Unreachable", "cannot run %s: %s" % (argv[0], e))
        except subprocess.TimeoutExpired:
            raise AccelctlError(
                args, "Error", "no answer within %s s" % (timeout or self.timeout)
            )
        return self._result(args, proc.returncode, proc.stdout, proc.stderr)

    def run_with_progress(self, *args, on_progress, timeout=None):
        """Runs a job command (program, flash) and reports its progress.

        accelctl draws its progress bar only on a terminal, so stderr is a pseudo-terminal
        here; ``on_progress(percent)`` is called for each new whole percentage.
        """
        argv = self._argv(args)
        master, slave = pty.openpty()
        try:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=slave,
                    text=True,
                )
            except FileNotFoundError as e:
                os.close(master)
                raise AccelctlError(
                    args, "Unreachable", "cannot run %s: %s" % (argv[0], e)
                )
        finally:
            os.close(slave)
        chunks = []
        reader = threading.Thread(
            target=_read_terminal, args=(master, chunks, on_progress), daemon=True
        )
        reader.start()
        try:
            stdout, _ = proc.communicate(timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AccelctlError(
                args, "Error", "no answer within %s s" % (timeout or self.timeout)
            )
        finally:
            reader.join(timeout=5)
            os.close(master)
        # The bar redraws with carriage returns; what is left is the error line, if any.
        stderr = "".join(chunks).replace("\r", "\n")
        lines = [l for l in stderr.splitlines() if l.startswith(("accelctl:", "hint:"))]
        return self._result(args, proc.returncode, stdout, "\n".join(lines))

    def _result(self, args, exit_code, stdout, stderr):
        if exit_code != 0:
            kind = _kind_of(exit_code, stderr)
            message = stderr.strip() or "exit code %d" % exit_code
            raise AccelctlError(args, kind, message, exit_code)
        try:
            return json.loads(stdout)
        except ValueError as e:
            raise AccelctlError(args, "Error", "output is not JSON (%s): %r" % (e, stdout[:200]))

    # The commands the adapters use.

    def devices(self):
        return self.run("devices")

    def slices(self, device):
        return self.run("slices", device)

    def show_slice(self, device, slice_id):
        return self.run("show", "%s/%s" % (device, slice_id))

    def whoami(self):
        return self.run("whoami")

    def firmware_status(self, device):
        return self.run("firmware", "status", device)

    def program(self, device, slice_id, image_path, on_progress=None):
        args = ("program", "%s/%s" % (device, slice_id), image_path)
        if on_progress is None:
            return self.run(*args)
        return self.run_with_progress(*args, on_progress=on_progress)

    def flash(self, device, image_path, signature_path=None, on_progress=None):
        args = ["firmware", "flash", device, image_path]
        if signature_path:
            args += ["--signature", signature_path]
        if on_progress is None:
            return self.run(*args)
        return self.run_with_progress(*args, on_progress=on_progress)


def _read_terminal(fd, chunks, on_progress):
    """Collects what accelctl writes to its terminal and reports each redraw's percentage.

    The bar is redrawn after a carriage return, so only text followed by one (or by a newline)
    is a whole redraw; a read may end in the middle of one.
    """
    last = None
    pending = ""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            # EIO once the child has closed its end of the terminal.
            return
        if not data:
            return
        text = data.decode("utf-8", "replace")
        chunks.append(text)
        *whole, pending = re.split(r"[\r\n]", pending + text)
        for redraw in whole:
            match = _PERCENT_RE.search(redraw)
            if not match:
                continue
            percent = int(match.group(1))
            if percent != last and percent <= 100:
                last = percent
                try:
                    on_progress(percent)
                except Exception:  # a logging callback must not kill the job's reader
                    LOG.exception("progress callback failed")
