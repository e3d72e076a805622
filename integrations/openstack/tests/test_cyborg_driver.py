"""The Cyborg driver against Cyborg's own loader, base classes and object types, and a real
accelgated on the simulated host, with accelctl running as the cyborg service user."""

import hashlib
import json
import logging
import os
import pwd

import pytest
from cyborg.accelerator.drivers.driver import GenericDriver
from cyborg.accelerator.drivers.fpga.base import FPGADriver
from cyborg.agent.resource_tracker import ResourceTracker
from cyborg.common import exception
from cyborg.conf import CONF
from cyborg.objects.driver_objects import driver_attach_handle
from cyborg.objects.driver_objects import driver_deployable
from cyborg.objects.driver_objects import driver_device

from accelgate_openstack.cyborg_driver import AccelgateDriver

from conftest import CYBORG_USER, IRONIC_USER, LOCAL_TENANT, as_user


@pytest.fixture
def configured(stack):
    """cyborg.conf as an operator would write it: the driver enabled, [accelgate] set."""
    CONF.set_override("enabled_drivers", ["accelgate_driver"], group="agent")
    CONF.set_override("accelctl_command", as_user(CYBORG_USER), group="accelgate")
    CONF.set_override("bus", stack.address, group="accelgate")
    CONF.set_override("sysfs_root", str(stack.sim / "sys"), group="accelgate")
    yield stack
    CONF.clear_override("enabled_drivers", group="agent")
    for opt in ("accelctl_command", "bus", "sysfs_root"):
        CONF.clear_override(opt, group="accelgate")


def load_driver():
    """The driver as cyborg-agent loads it: ResourceTracker reads [agent] enabled_drivers and
    loads each through stevedore from the cyborg.accelerator.driver entry points."""
    tracker = ResourceTracker("compute-test", cond_api=None)
    assert len(tracker.acc_drivers) == 1
    return tracker.acc_drivers[0]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def region_cpid(devices, device, slice_id):
    """The control path Cyborg's bind flow hands to program(): cpid_type and the stored
    cpid_info string decoded back to a dict (FPGAExtARQ._do_programming does this)."""
    for d in devices:
        info = json.loads(d.controlpath_id.cpid_info)
        if info.get("slice") == slice_id and d.deployable_list[0].name.endswith(
            "_%s_%s" % (device, slice_id)
        ):
            return {"cpid_type": d.controlpath_id.cpid_type, "cpid_info": info}
    raise AssertionError("no Cyborg device for %s/%s" % (device, slice_id))


def test_cyborg_loads_the_driver_from_its_entry_point(configured):
    driver = load_driver()
    assert isinstance(driver, AccelgateDriver)
    assert isinstance(driver, GenericDriver) and isinstance(driver, FPGADriver)
    # cyborg-agent's fpga_program() finds the driver by the deployable's driver_name.
    assert type(FPGADriver.create("accelgate")) is AccelgateDriver
    driver.init_host()  # the cyborg role grants slice.program


def test_init_host_rejects_an_identity_without_slice_program(configured):
    CONF.set_override("accelctl_command", as_user(IRONIC_USER), group="accelgate")
    with pytest.raises(exception.ConfigInvalid, match="slice.program"):
        load_driver().init_host()


def test_discover_matches_the_daemons_inventory(configured):
    stack = configured
    stack.root("assign", "fpga0/region0", "user:%s" % CYBORG_USER)
    stack.root("vfs", "nic0", "3")
    stack.root("assign", "nic0/vf0", "user:%s" % CYBORG_USER)
    stack.root("assign", "nic0/vf1", "user:%s" % LOCAL_TENANT)

    devices = load_driver().discover()

    inventory = {d["id"]: d for d in stack.root("devices")}
    assert set(inventory) == {"fpga0", "nic0"}
    for d in devices:
        assert isinstance(d, driver_device.DriverDevice)
        d.obj_to_primitive()  # every field set and of Cyborg's declared type
        for dep in d.deployable_list:
            assert isinstance(dep, driver_deployable.DriverDeployable)
            assert dep.driver_name == "accelgate"
            for h in dep.attach_handle_list:
                assert isinstance(h, driver_attach_handle.DriverAttachHandle)

    # Every slice the daemon has is one deployable, and nothing else is.
    by_slice = {}
    for d in devices:
        for dep in d.deployable_list:
            by_slice[dep.name.split("_", 1)[1]] = (d, dep)
    daemon_slices = {
        "%s_%s" % (dev, s["id"]): s for dev in inventory for s in stack.root("slices", dev)
    }
    assert set(by_slice) == set(daemon_slices)

    def pci(text):
        f = json.loads(text)
        return "%s:%s:%s.%s" % (f["domain"], f["bus"], f["device"], f["function"])

    # Regions: a Cyborg device each, control path = the card's PCI function + the slice.
    fpga = inventory["fpga0"]
    for region in ("region0", "region1"):
        d, dep = by_slice["fpga0_" + region]
        assert d.type == "FPGA" and d.vendor == "0x%04x" % fpga["vendor_id"]
        info = json.loads(d.controlpath_id.cpid_info)
        assert d.controlpath_id.cpid_type == "PCI"
        assert pci(d.controlpath_id.cpid_info) == fpga["pci_address"]
        assert info["slice"] == region
        [handle] = dep.attach_handle_list
        assert handle.attach_type == "PCI"
        assert pci(handle.attach_info) == fpga["pci_address"]
        attrs = {a.key: a.value for a in dep.attribute_list}
        assert attrs["rc"] == "FPGA"
    # Assigned to the cyborg user: OpenStack's to hand out. Unassigned: not OpenStack's.
    assert by_slice["fpga0_region0"][1].attach_handle_list[0].in_use is False
    assert by_slice["fpga0_region1"][1].attach_handle_list[0].in_use is True

    # VFs: deployables of the PF's device, each attach handle the VF's own function. The
    # simulator numbers VF i of PF bus BB as BB:00.(1+i) (docs/simulated-hardware.md).
    nic = inventory["nic0"]
    nic_devices = [d for d in devices if "slice" not in json.loads(d.controlpath_id.cpid_info)]
    assert len(nic_devices) == 1
    [nic_dev] = nic_devices
    assert nic_dev.type == "NIC" and pci(nic_dev.controlpath_id.cpid_info) == nic["pci_address"]
    assert len(nic_dev.deployable_list) == nic["num_vfs"] == 3
    expected_in_use = {"vf0": False, "vf1": True, "vf2": True}
    for i in range(3):
        d, dep = by_slice["nic0_vf%d" % i]
        assert d is nic_dev
        [handle] = dep.attach_handle_list
        # VF i at routing id offset + i * stride: 128 and 2 for nic0, as QEMU's igb.
        devfn = 128 + 2 * i
        assert pci(handle.attach_info) == "0000:5e:%02x.%d" % (devfn >> 3, devfn & 7)
        assert handle.in_use is expected_in_use["vf%d" % i]

    # Placement sees a slice change hands: the local tenant releases vf1, the operator gives it
    # to OpenStack.
    stack.root("release", "nic0/vf1")
    stack.root("assign", "nic0/vf1", "user:%s" % CYBORG_USER)
    again = {dep.name: dep for d in load_driver().discover() for dep in d.deployable_list}
    assert again[by_slice["nic0_vf1"][1].name].attach_handle_list[0].in_use is False


def loader_files(stack, name):
    """(mtime, size) of every file of a simulated firmware-upload entry: any upload writes them."""
    entry = stack.sim / "sys" / "class" / "firmware" / name
    return {
        f: (os.stat(entry / f).st_mtime_ns, os.stat(entry / f).st_size)
        for f in sorted(os.listdir(entry))
    }


def test_program_loads_the_slice_and_is_idempotent_on_the_device(configured, caplog):
    stack = configured
    stack.root("assign", "fpga0/region0", "user:%s" % CYBORG_USER)
    image = stack.write_file("app.gbs", os.urandom(100_000))
    driver = load_driver()
    cpid = region_cpid(driver.discover(), "fpga0", "region0")

    assert driver.program(cpid, str(image)) is True
    state = stack.root("show", "fpga0/region0")
    assert state["image_sha256"] == sha256(image)
    # The hardware holds it: IMAGE_STATUS = 1 and IMAGE_TAG = sha256's first 8 bytes (LE).
    regs = stack.root("read", "fpga0/region0", "0x8", "--count", "2", "--width", "8")
    assert regs[0]["value"] == 1
    assert regs[1]["value"] == int.from_bytes(bytes.fromhex(sha256(image))[:8], "little")

    files_before = loader_files(stack, "fpga0-region0")
    audit_before = len(stack.audit())
    caplog.set_level(logging.INFO, logger="accelgate_openstack.cyborg_driver")
    # A retry, as Cyborg does after its database lost track: the same bitstream again.
    assert FPGADriver.create("accelgate").program(cpid, str(image)) is True
    assert loader_files(stack, "fpga0-region0") == files_before, "the loader was written"
    assert stack.root("show", "fpga0/region0")["image_sha256"] == sha256(image)
    # The request did reach accelgated, as the cyborg user, and was allowed: it is the daemon
    # that wrote nothing, not the driver that skipped the call.
    [record] = stack.audit()[audit_before:]
    assert (record["operation"], record["target"], record["decision"]) == (
        "slice.program", "fpga0/region0", "allow"), record
    assert record["uid"] == pwd.getpwnam(CYBORG_USER).pw_uid
    # ... and its job said so (the driver logs the job's message).
    assert "image %s is already loaded" % sha256(image) in caplog.text, caplog.text

    # A different bitstream is written: the check above is not vacuous.
    other = stack.write_file("other.gbs", os.urandom(50_000))
    assert driver.program(cpid, str(other)) is True
    assert loader_files(stack, "fpga0-region0") != files_before
    assert stack.root("show", "fpga0/region0")["image_sha256"] == sha256(other)


def test_program_outside_the_role_is_refused_as_not_authorized(configured):
    stack = configured
    stack.root("assign", "fpga0/region0", "user:%s" % CYBORG_USER)
    stack.root("assign", "fpga0/region1", "user:%s" % LOCAL_TENANT)
    image = stack.write_file("app.gbs", os.urandom(10_000))
    driver = load_driver()
    cpid = region_cpid(driver.discover(), "fpga0", "region1")

    with pytest.raises(exception.NotAuthorized) as refused:
        driver.program(cpid, str(image))
    assert isinstance(refused.value, exception.CyborgException)
    assert "NotAuthorized" in str(refused.value) and "fpga0/region1" in str(refused.value)
    assert stack.root("show", "fpga0/region1")["image_sha256"] == ""
    denied = [r for r in stack.audit() if "region1" in json.dumps(r)]
    assert denied, "the refusal was not audited"


def test_failures_surface_as_cyborg_exceptions(configured):
    stack = configured
    driver = load_driver()
    image = stack.write_file("app.gbs", os.urandom(1000))
    with pytest.raises(exception.InvalidType):
        driver.program({"cpid_type": "MDEV", "cpid_info": {}}, str(image))
    with pytest.raises(exception.ResourceNotFound):
        driver.program(
            {
                "cpid_type": "PCI",
                "cpid_info": {"domain": "0000", "bus": "99", "device": "00", "function": "0"},
            },
            str(image),
        )
    # The PF's control path alone names no single region of a two-region card.
    with pytest.raises(exception.ExpectedOneObject):
        driver.program(
            {
                "cpid_type": "PCI",
                "cpid_info": json.dumps(
                    {"domain": "0000", "bus": "3b", "device": "00", "function": "0"}
                ),
            },
            str(image),
        )
    # VFs have no image loader: accelgated says InvalidArgument.
    stack.root("vfs", "nic0", "1")
    stack.root("assign", "nic0/vf0", "user:%s" % CYBORG_USER)
    with pytest.raises(exception.InvalidParameterValue):
        driver.program(
            {
                "cpid_type": "PCI",
                "cpid_info": {
                    "domain": "0000", "bus": "5e", "device": "00", "function": "0",
                    "slice": "vf0",
                },
            },
            str(image),
        )
    # Firmware is not Cyborg's: update() reports False (GenericDriver's contract).
    fw_cpid = {"cpid_type": "PCI", "cpid_info": {
        "domain": "0000", "bus": "3b", "device": "00", "function": "0", "slice": "region0"}}
    assert driver.update(fw_cpid, str(image)) is False
    # accelgated gone: the agent's periodic discover fails with ServiceUnavailable.
    stack.stop_daemon()
    with pytest.raises(exception.ServiceUnavailable):
        driver.discover()


def test_get_stats_reports_firmware_and_images(configured):
    stack = configured
    stack.root("assign", "fpga0/region0", "user:%s" % CYBORG_USER)
    image = stack.write_file("app.gbs", os.urandom(4096))
    driver = load_driver()
    driver.program(region_cpid(driver.discover(), "fpga0", "region0"), str(image))
    stats = driver.get_stats()
    assert set(stats) == {"fpga0", "nic0"}
    fpga = stack.root("show", "fpga0")
    assert stats["fpga0"]["firmware_version"] == fpga["firmware_version"]
    assert stats["fpga0"]["slices"]["region0"] == {
        "kind": "region",
        "tenant": "user:%s" % CYBORG_USER,
        "image_sha256": sha256(image),
    }
