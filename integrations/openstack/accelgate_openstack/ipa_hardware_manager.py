"""An ironic-python-agent hardware manager for accelerator firmware through accelgated.

Entry point ``accelgate`` in ``ironic_python_agent.hardware_managers``. It adds:

- the clean and service step ``flash_accelerator_firmware`` (deploy interface, priority 0: run
  it as a manual clean step or a service step). accelgated verifies the minisign signature
  against the keys its policy names, writes the inactive slot, reads it back and switches
  slots atomically; progress goes to the agent's log.
- ``accelerator_firmware`` in the node's inventory: every accelgate device with its firmware
  version, active slot, state and last result.

The agent asks accelgated through accelctl; the identity it acts as needs a role granting
``device.flash`` (docs/openstack.md).
"""

import logging
import os
import shutil
import tempfile
import urllib.parse

# IPA's options first, as the agent itself imports them before its hardware module.
from ironic_python_agent import config as ipa_config  # noqa: F401
from ironic_python_agent import errors
from ironic_python_agent import hardware
from oslo_config import cfg

from accelgate_openstack import config
from accelgate_openstack.accelctl import Accelctl, AccelctlError

LOG = logging.getLogger(__name__)

CONF = config.register(cfg.CONF)

STEP = "flash_accelerator_firmware"

IMAGES_ARGSINFO = {
    "images": {
        "description": "A list of firmware images, each a map with 'device' (the accelgate "
        "device id, e.g. fpga0), 'url' (file://, http:// or https://), 'signature_url' "
        "(its minisign signature; required unless the device's policy allows unsigned "
        "images) and optionally 'version' (the version the device must report afterwards).",
        "required": True,
    }
}


class AcceleratorFirmwareError(errors.RESTError):
    """accelgated refused or failed a flash, or the result is not what was asked for."""

    message = "Accelerator firmware flash failed"

    def __init__(self, details, kind=None):
        super().__init__(details)
        # accelgated's error kind (VerificationFailed, NotAuthorized, Locked, ...), if any.
        self.kind = kind


class InvalidAcceleratorFirmwareArgs(errors.RESTError):
    """The step's ``images`` argument is malformed."""

    message = "Invalid accelerator firmware images"
    status_code = 400

    def __init__(self, details):
        super().__init__(details)


def _validate(images):
    if not isinstance(images, list) or not images:
        raise InvalidAcceleratorFirmwareArgs("images must be a non-empty list")
    allowed = {"device", "url", "signature_url", "version"}
    for i, image in enumerate(images):
        if not isinstance(image, dict):
            raise InvalidAcceleratorFirmwareArgs("images[%d] is not a map" % i)
        unknown = set(image) - allowed
        if unknown:
            raise InvalidAcceleratorFirmwareArgs(
                "images[%d] has unknown keys %s" % (i, sorted(unknown))
            )
        for key in ("device", "url"):
            if not isinstance(image.get(key), str) or not image[key]:
                raise InvalidAcceleratorFirmwareArgs("images[%d] needs '%s'" % (i, key))


def _fetch(url, directory, name):
    """A local, world-readable path for ``url`` (accelctl may run as another user)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        if not os.path.isfile(path):
            raise AcceleratorFirmwareError("%s: no such file" % url)
        return path
    if parsed.scheme in ("http", "https"):
        import requests  # only needed for remote images

        path = os.path.join(directory, name)
        try:
            with requests.get(url, stream=True, timeout=60) as resp:
                resp.raise_for_status()
                with open(path, "wb") as f:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
        except (requests.RequestException, OSError) as e:
            raise AcceleratorFirmwareError("cannot download %s: %s" % (url, e))
        os.chmod(path, 0o644)
        return path
    raise InvalidAcceleratorFirmwareArgs("%s: only file, http and https URLs" % url)


class AccelgateHardwareManager(hardware.HardwareManager):
    HARDWARE_MANAGER_NAME = "AccelgateHardwareManager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def __init__(self, accelctl=None):
        conf = CONF.accelgate
        self.accelctl = accelctl or Accelctl(
            conf.accelctl_command, conf.bus, conf.command_timeout
        )

    def evaluate_hardware_support(self):
        """SERVICE_PROVIDER when accelgated answers with at least one device, else NONE."""
        try:
            devices = self.accelctl.devices()
        except AccelctlError as e:
            LOG.info("accelgate hardware manager inactive: %s", e)
            return hardware.HardwareSupport.NONE
        if not devices:
            return hardware.HardwareSupport.NONE
        return hardware.HardwareSupport.SERVICE_PROVIDER

    # ---- inventory ----

    def accelerator_firmware(self):
        """Firmware of every accelgate device, as the inventory reports it."""
        result = []
        try:
            for dev in self.accelctl.devices():
                status = self.accelctl.firmware_status(dev["id"])
                result.append(
                    {
                        "device": dev["id"],
                        "pci_address": dev["pci_address"],
                        "kind": dev["kind"],
                        "firmware_version": status["firmware_version"],
                        "firmware_active_slot": status["firmware_active_slot"],
                        "firmware_state": status["firmware_state"],
                        "firmware_last_result": status["firmware_last_result"],
                        "firmware_locked": status["firmware_locked"],
                    }
                )
        except AccelctlError as e:
            # Inventory must not fail for this: report what could not be read.
            LOG.warning("accelerator firmware not in the inventory: %s", e)
        return result

    def list_hardware_info(self):
        """The next manager's inventory, with ``accelerator_firmware`` added."""
        for manager in hardware.get_managers():
            if isinstance(manager, AccelgateHardwareManager):
                continue
            try:
                info = manager.list_hardware_info()
            except errors.IncompatibleHardwareMethodError:
                continue
            info["accelerator_firmware"] = self.accelerator_firmware()
            return info
        raise errors.IncompatibleHardwareMethodError()

    # ---- steps ----

    def _steps(self):
        return [
            {
                "step": STEP,
                "priority": 0,
                "interface": "deploy",
                "reboot_requested": False,
                # A flash is switched to atomically at its end; stopping it halfway is
                # accelgated's to handle, not the conductor's.
                "abortable": False,
                "argsinfo": IMAGES_ARGSINFO,
            }
        ]

    def get_clean_steps(self, node, ports):
        return self._steps()

    def get_service_steps(self, node, ports):
        return self._steps()

    def flash_accelerator_firmware(self, node, ports, images):
        """Flashes each image to its device through accelgated; returns what each reports."""
        _validate(images)
        results = []
        workdir = tempfile.mkdtemp(prefix="accelgate-fw-")
        os.chmod(workdir, 0o755)
        try:
            for i, image in enumerate(images):
                results.append(self._flash_one(image, workdir, i))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return results

    def _flash_one(self, image, workdir, index):
        device = image["device"]
        path = _fetch(image["url"], workdir, "image%d" % index)
        signature = None
        if image.get("signature_url"):
            signature = _fetch(image["signature_url"], workdir, "image%d.minisig" % index)
        LOG.info("Flashing accelerator firmware %s to %s", image["url"], device)

        def progress(percent):
            LOG.info("Flashing %s: %d%%", device, percent)

        try:
            job = self.accelctl.flash(device, path, signature, on_progress=progress)
            status = self.accelctl.firmware_status(device)
        except AccelctlError as e:
            raise AcceleratorFirmwareError("%s: %s" % (device, e.message), kind=e.kind)
        wanted = image.get("version")
        if wanted and status["firmware_version"] != wanted:
            raise AcceleratorFirmwareError(
                "%s reports firmware %r after the flash, not %r"
                % (device, status["firmware_version"], wanted)
            )
        LOG.info(
            "Flashed %s: %s (version %s, slot %s)",
            device,
            job.get("message", ""),
            status["firmware_version"],
            status["firmware_active_slot"],
        )
        return {
            "device": device,
            "message": job.get("message", ""),
            "firmware_version": status["firmware_version"],
            "firmware_active_slot": status["firmware_active_slot"],
        }
