"""The ironic-python-agent hardware manager against IPA's loader, base class and errors, and a
real accelgated on the simulated host, with accelctl running as the ironic service user."""

import functools
import http.server
import logging
import os
import re
import subprocess
import threading

import pytest
import stevedore
# IPA's options before its modules, as the agent itself does.
from ironic_python_agent import config as ipa_config  # noqa: F401
from ironic_python_agent import errors
from ironic_python_agent import hardware
from ironic_python_agent.extensions import clean
from ironic_python_agent.extensions import service
from oslo_config import cfg

from accelgate_openstack import ipa_hardware_manager as hwm

from conftest import CYBORG_USER, IRONIC_USER, REPO, as_user

DEMO_KEY = REPO / "policy" / "demo-keys" / "accelgate-DEMO-ONLY.key"


@pytest.fixture
def configured(stack):
    """The agent's [accelgate] options: accelctl as the ironic user, the test bus."""
    conf = cfg.CONF
    conf.set_override("accelctl_command", as_user(IRONIC_USER), group="accelgate")
    conf.set_override("bus", stack.address, group="accelgate")
    yield stack
    for opt in ("accelctl_command", "bus"):
        conf.clear_override(opt, group="accelgate")


def load_manager():
    """The manager as IPA loads hardware managers: stevedore, its entry point namespace."""
    ext = stevedore.ExtensionManager(
        namespace="ironic_python_agent.hardware_managers", invoke_on_load=True
    )
    [manager] = [e.obj for e in ext if e.name == "accelgate"]
    assert isinstance(manager, hardware.HardwareManager)
    return manager


def firmware_image(stack, version, size=1_000_000, signed=True):
    image = stack.write_file("fw-%s.bin" % version, b"ACCELGATE-FW %s\n" % version.encode()
                             + os.urandom(size))
    if signed:
        subprocess.run(
            ["minisign", "-S", "-s", str(DEMO_KEY), "-m", str(image)],
            check=True, capture_output=True,
        )
        os.chmod(str(image) + ".minisig", 0o644)
    return image


def test_ipa_loads_the_manager_and_it_claims_the_hardware(configured):
    manager = load_manager()
    assert manager.evaluate_hardware_support() == hardware.HardwareSupport.SERVICE_PROVIDER
    assert manager.get_version() == {"name": "AccelgateHardwareManager", "version": "1.0"}
    for steps in (manager.get_clean_steps({}, []), manager.get_service_steps({}, [])):
        [step] = steps
        assert step["step"] == "flash_accelerator_firmware"
        assert step["interface"] == "deploy" and step["priority"] == 0
        assert step["abortable"] is False and step["argsinfo"]["images"]["required"]
        assert callable(getattr(manager, step["step"]))
    # No accelgated on the bus: the manager stands aside instead of failing the agent.
    configured.stop_daemon()
    assert load_manager().evaluate_hardware_support() == hardware.HardwareSupport.NONE


def test_clean_step_flashes_signed_firmware_with_progress_in_the_log(configured, caplog):
    stack = configured
    before = stack.root("firmware", "status", "fpga0")
    image = firmware_image(stack, "2.0.0")
    manager = load_manager()
    caplog.set_level(logging.INFO, logger=hwm.__name__)

    result = manager.flash_accelerator_firmware(
        {}, [],
        images=[{
            "device": "fpga0",
            "url": "file://%s" % image,
            "signature_url": "file://%s.minisig" % image,
            "version": "2.0.0",
        }],
    )

    after = stack.root("firmware", "status", "fpga0")
    assert after["firmware_version"] == "2.0.0" != before["firmware_version"]
    assert after["firmware_active_slot"] != before["firmware_active_slot"]
    assert result == [{
        "device": "fpga0",
        "message": result[0]["message"],
        "firmware_version": "2.0.0",
        "firmware_active_slot": after["firmware_active_slot"],
    }]
    percents = [int(m) for m in re.findall(r"Flashing fpga0: (\d+)%", caplog.text)]
    assert len(percents) >= 2 and percents[-1] == 100, caplog.text
    assert percents == sorted(percents)
    # The flash was the ironic user's, not root's.
    uid = int(subprocess.run(["id", "-u", IRONIC_USER], capture_output=True, text=True,
                             check=True).stdout)
    flashes = [r for r in stack.audit() if r.get("operation") == "device.flash"]
    assert flashes and all(r.get("uid") == uid for r in flashes), flashes

    # Cleaning again with the same image (a retried or repeated step) writes nothing.
    again = manager.flash_accelerator_firmware({}, [], images=[{
        "device": "fpga0",
        "url": "file://%s" % image,
        "signature_url": "file://%s.minisig" % image,
    }])
    assert "already active" in again[0]["message"], again
    assert stack.root("firmware", "status", "fpga0")["firmware_active_slot"] == (
        after["firmware_active_slot"])

    # The inventory now reports it.
    inventory = {f["device"]: f for f in manager.accelerator_firmware()}
    assert inventory["fpga0"]["firmware_version"] == "2.0.0"
    assert inventory["fpga0"]["firmware_active_slot"] == after["firmware_active_slot"]
    assert inventory["fpga0"]["pci_address"] == "0000:3b:00.0"
    assert set(inventory) == {d["id"] for d in stack.root("devices")}


@pytest.fixture
def image_server(configured):
    """An HTTP server on loopback serving the stack's directory, as an image store would."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(configured.dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_clean_step_downloads_images_over_http(configured, image_server):
    image = firmware_image(configured, "2.3.0", size=200_000)
    result = load_manager().flash_accelerator_firmware({}, [], images=[{
        "device": "fpga0",
        "url": "%s/%s" % (image_server, image.name),
        "signature_url": "%s/%s.minisig" % (image_server, image.name),
        "version": "2.3.0",
    }])
    assert result[0]["firmware_version"] == "2.3.0"
    assert configured.root("firmware", "status", "fpga0")["firmware_version"] == "2.3.0"
    e = refused(load_manager(), [{"device": "fpga0", "url": "%s/missing.bin" % image_server}])
    assert "404" in e.details, e.details


def refused(manager, images):
    with pytest.raises(hwm.AcceleratorFirmwareError) as err:
        manager.flash_accelerator_firmware({}, [], images=images)
    # What IPA sends Ironic for a failed step: a RESTError, serialized.
    assert isinstance(err.value, errors.RESTError)
    body = err.value.serialize()
    assert body["type"] == "AcceleratorFirmwareError"
    assert body["message"] == "Accelerator firmware flash failed"
    return err.value


def test_unsigned_or_wrongly_signed_firmware_is_refused(configured):
    stack = configured
    before = stack.root("firmware", "status", "fpga0")
    manager = load_manager()
    unsigned = firmware_image(stack, "3.0.0", signed=False)
    e = refused(manager, [{"device": "fpga0", "url": "file://%s" % unsigned}])
    assert e.kind == "VerificationFailed", e.details

    # A valid signature of another file does not sign this one.
    other = firmware_image(stack, "3.0.1")
    e = refused(manager, [{
        "device": "fpga0",
        "url": "file://%s" % unsigned,
        "signature_url": "file://%s.minisig" % other,
    }])
    assert e.kind == "VerificationFailed", e.details
    after = stack.root("firmware", "status", "fpga0")
    assert (after["firmware_version"], after["firmware_active_slot"]) == (
        before["firmware_version"], before["firmware_active_slot"])


def test_flash_needs_the_ironic_role(configured):
    cfg.CONF.set_override("accelctl_command", as_user(CYBORG_USER), group="accelgate")
    image = firmware_image(configured, "2.0.0")
    e = refused(load_manager(), [{
        "device": "fpga0",
        "url": "file://%s" % image,
        "signature_url": "file://%s.minisig" % image,
    }])
    assert e.kind == "NotAuthorized", e.details


def test_bad_step_arguments_are_rejected_before_any_flash(configured):
    manager = load_manager()
    for images in ([], [{"url": "file:///x"}], [{"device": "fpga0", "url": "ftp://h/x"}],
                   [{"device": "fpga0", "url": "file:///x", "checksum": "1"}]):
        with pytest.raises(hwm.InvalidAcceleratorFirmwareArgs):
            manager.flash_accelerator_firmware({}, [], images=images)
    e = refused(manager, [{"device": "fpga0", "url": "file:///nonexistent/fw.bin"}])
    assert "no such file" in e.details


class InventoryOfTheNode(hardware.HardwareManager):
    """Stands in for GenericHardwareManager, whose initialize() would probe this host's disks,
    iSCSI, RAID and IPMI modules, and whose inventory needs lshw and a BMC."""

    def evaluate_hardware_support(self):
        return hardware.HardwareSupport.GENERIC

    def list_hardware_info(self):
        return {"cpu": "test", "memory": "test"}


@pytest.fixture
def agent_managers(configured, monkeypatch):
    """IPA's cache of probed managers (hardware._global_managers, as IPA's own tests set it):
    ours and the stand-in, each with the support it reports."""
    managers = [load_manager(), InventoryOfTheNode()]
    detail = sorted(
        ({"name": type(m).__name__, "manager": m, "support": m.evaluate_hardware_support()}
         for m in managers),
        key=lambda d: -d["support"],
    )
    monkeypatch.setattr(hardware, "_global_managers", detail)
    monkeypatch.setattr(hardware, "NODE", None)
    # No root disk to wait for on a test host.
    cfg.CONF.set_override("disk_wait_attempts", 0)
    yield configured
    cfg.CONF.clear_override("disk_wait_attempts")


def test_inventory_carries_accelerator_firmware(agent_managers):
    info = hardware.dispatch_to_managers("list_hardware_info")
    assert info["cpu"] == "test"
    versions = {f["device"]: f["firmware_version"] for f in info["accelerator_firmware"]}
    status = agent_managers.root("firmware", "status", "fpga0")
    assert versions["fpga0"] == status["firmware_version"]


NODE = {"uuid": "4b6b51a0-0000-4000-8000-000000000013"}


def test_ironic_runs_the_steps_through_the_agents_extensions(agent_managers):
    """What Ironic sees: steps listed, run and failed through IPA's clean and service API."""
    stack = agent_managers
    clean_api = clean.CleanExtension()
    listed = clean_api.get_clean_steps(node=NODE, ports=[]).command_result
    steps = [s for s in listed["clean_steps"]["AccelgateHardwareManager"] if s["step"] == hwm.STEP]
    assert len(steps) == 1, listed
    version = listed["hardware_manager_version"]
    assert version["AccelgateHardwareManager"] == "1.0"

    image = firmware_image(stack, "2.1.0")
    step = {"interface": "deploy", "step": hwm.STEP, "priority": 0, "args": {"images": [{
        "device": "fpga0",
        "url": "file://%s" % image,
        "signature_url": "file://%s.minisig" % image,
        "version": "2.1.0",
    }]}}
    done = clean_api.execute_clean_step(
        step=step, node=NODE, ports=[], clean_version=version).join(120).serialize()
    assert done["command_status"] == "SUCCEEDED", done
    assert done["command_result"]["clean_result"][0]["firmware_version"] == "2.1.0"
    assert stack.root("firmware", "status", "fpga0")["firmware_version"] == "2.1.0"

    # An unsigned image, as a service step on a deployed node: the error Ironic receives.
    unsigned = firmware_image(stack, "2.2.0", signed=False)
    service_api = service.ServiceExtension()
    listed = service_api.get_service_steps(node=NODE, ports=[]).command_result
    assert any(s["step"] == hwm.STEP for s in listed["service_steps"]["AccelgateHardwareManager"]), listed
    step = {"interface": "deploy", "step": hwm.STEP, "priority": 0,
            "args": {"images": [{"device": "fpga0", "url": "file://%s" % unsigned}]}}
    failed = service_api.execute_service_step(
        step=step, node=NODE, ports=[],
        service_version=listed["hardware_manager_version"]).join(120).serialize()
    assert failed["command_status"] == "FAILED", failed
    error = failed["command_error"].serialize()
    assert error["type"] == "AcceleratorFirmwareError", error
    assert "VerificationFailed" in error["details"], error
    assert stack.root("firmware", "status", "fpga0")["firmware_version"] == "2.1.0"
