"""A Cyborg accelerator driver that manages accelerators through accelgated.

Entry point ``accelgate_driver`` in ``cyborg.accelerator.driver``; enable it with
``[agent] enabled_drivers = accelgate_driver`` in cyborg.conf. The driver runs with the
cyborg-agent's own identity and no privilege: accelgated's role policy decides what it may do
(see docs/openstack.md).

How accelgate's inventory maps onto Cyborg's model:

- Cyborg programs through a device's control path alone (``program(controlpath_id, path)``),
  while accelgate programs a slice. So every programmable slice (a region) is reported as a
  Cyborg device of its own, whose PCI control path carries the slice:
  ``cpid_info = {"bus", "device", "domain", "function", "slice"}``. It has one deployable
  with one attach handle, the card's PCI function.
- The VF slices of an SR-IOV device are deployables of one Cyborg device (control path: the
  PF), one per VF, each with an attach handle holding the VF's own PCI address.
- Slices the operator has given to OpenStack are those assigned to the service's identity
  (its user or one of its groups). Every other slice is reported ``in_use``: it is either
  held by a local tenant or not OpenStack's, so Cyborg must not hand it out.
"""

import grp
import json
import logging
import os
import pwd
import socket
from collections import OrderedDict

from cyborg.accelerator.drivers.driver import GenericDriver
from cyborg.accelerator.drivers.fpga.base import FPGADriver
from cyborg.common import constants
from cyborg.common import exception
from cyborg.conf import CONF
from cyborg.objects.driver_objects import driver_attach_handle
from cyborg.objects.driver_objects import driver_attribute
from cyborg.objects.driver_objects import driver_controlpath_id
from cyborg.objects.driver_objects import driver_deployable
from cyborg.objects.driver_objects import driver_device

from accelgate_openstack import config
from accelgate_openstack.accelctl import Accelctl, AccelctlError

LOG = logging.getLogger(__name__)

config.register(CONF)

# The name Cyborg stores on deployables; its agent finds this driver by it
# (FPGADriver.create matches it against VENDOR) when a bind needs programming.
DRIVER_NAME = "accelgate"

_DEVICE_TYPES = {
    "fpga": constants.DEVICE_FPGA,
    "gpu": constants.DEVICE_GPU,
    "nic": constants.DEVICE_NIC,
    "qat": constants.DEVICE_QAT,
    "ssd": constants.DEVICE_SSD,
}


def device_type(kind):
    """Cyborg's device type for an accelgate device kind (PCI when Cyborg has none)."""
    return _DEVICE_TYPES.get(kind, constants.DEVICE_PCI)


def resource_class(dev_type):
    return constants.RESOURCES.get(dev_type, constants.RESOURCES["PCI"])


def pci_fields(address):
    """``dddd:bb:dd.f`` as Cyborg's control-path fields."""
    try:
        dbs, function = address.split(".")
        domain, bus, dev = dbs.split(":")
    except ValueError:
        raise exception.PciDeviceWrongAddressFormat(address=address)
    return {"domain": domain, "bus": bus, "device": dev, "function": function}


def cpid_info(address, slice_id=None):
    """The control path's JSON, keys sorted as Cyborg's own PCI control paths are."""
    fields = pci_fields(address)
    if slice_id is not None:
        fields["slice"] = slice_id
    return json.dumps(OrderedDict(sorted(fields.items())))


def to_cyborg_error(error, what):
    """The Cyborg exception for an accelctl failure: what Cyborg's callers catch and log."""
    text = "%s: %s" % (what, error.message)
    if error.kind == "NotAuthorized":
        return exception.NotAuthorized(message=text)
    if error.kind == "NotFound":
        return exception.ResourceNotFound(resource="accelgate target", msg=text)
    if error.kind == "Busy":
        return exception.DeviceBusy(message=text)
    if error.kind in ("InvalidArgument", "Usage"):
        return exception.InvalidParameterValue(err=text)
    if error.kind == "Unreachable":
        return exception.ServiceUnavailable(message=text)
    return exception.FPGAProgramError(ret=text)


class Identity:
    """Who the daemon says we are, and the tenant names that mean us."""

    def __init__(self, uid):
        self.uid = uid
        self.names = {"uid:%d" % uid}
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            return
        self.names.add("user:%s" % user.pw_name)
        for gid in os.getgrouplist(user.pw_name, user.pw_gid):
            self.names.add("gid:%d" % gid)
            try:
                self.names.add("group:%s" % grp.getgrgid(gid).gr_name)
            except KeyError:
                pass

    def holds(self, slice_info):
        return slice_info.get("tenant", "") in self.names


class AccelgateDriver(FPGADriver, GenericDriver):
    """Cyborg driver for the devices and slices accelgated manages."""

    VENDOR = DRIVER_NAME

    def __init__(self, *args, accelctl=None, sysfs_root=None, **kwargs):
        super().__init__()
        conf = CONF.accelgate
        self.accelctl = accelctl or Accelctl(
            conf.accelctl_command, conf.bus, conf.command_timeout
        )
        self.sysfs_root = sysfs_root or conf.sysfs_root
        self.hostname = socket.gethostname()

    def _call(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AccelctlError as e:
            raise to_cyborg_error(e, what)

    def identity(self):
        me = self._call("whoami", self.accelctl.whoami)
        return Identity(int(me["uid"]))

    def init_host(self):
        """Checks at agent start that accelgated answers and grants slice.program."""
        me = self._call("whoami", self.accelctl.whoami)
        if "slice.program" not in me.get("operations", []):
            raise exception.ConfigInvalid(
                error_msg="accelgated grants uid %s no slice.program: give the cyborg "
                "service user a role for it (docs/openstack.md)" % me.get("uid")
            )

    # ---- discover ----

    def discover(self):
        """Cyborg devices for accelgated's devices and slices (see the module doc)."""
        me = self.identity()
        found = []
        for dev in self._call("devices", self.accelctl.devices):
            slices = self._call("slices %s" % dev["id"], self.accelctl.slices, dev["id"])
            for s in slices:
                if s["kind"] != "vf":
                    found.append(self._slice_device(dev, s, me))
            if dev.get("total_vfs", 0) > 0:
                vfs = [s for s in slices if s["kind"] == "vf"]
                found.append(self._vf_device(dev, vfs, me))
        return found

    def _device(self, dev, cpid, deployables, stub=False):
        obj = driver_device.DriverDevice()
        obj.vendor = "0x%04x" % dev["vendor_id"]
        obj.model = "0x%04x" % dev["product_id"]
        obj.type = device_type(dev["kind"])
        obj.std_board_info = json.dumps({"product_id": "0x%04x" % dev["product_id"]})
        obj.vendor_board_info = json.dumps(
            {
                "accelgate_device": dev["id"],
                "firmware_version": dev.get("firmware_version", ""),
            }
        )
        path = driver_controlpath_id.DriverControlPathID()
        path.cpid_type = constants.CPID_TYPE_PCI
        path.cpid_info = cpid
        obj.controlpath_id = path
        obj.deployable_list = deployables
        obj.stub = stub
        return obj

    def _slice_device(self, dev, s, me):
        handle = self._attach_handle(dev["pci_address"], in_use=not me.holds(s))
        deployable = self._deployable(dev, s, [handle])
        return self._device(dev, cpid_info(dev["pci_address"], s["id"]), [deployable])

    def _vf_device(self, dev, vfs, me):
        deployables = []
        for s in vfs:
            address = self.vf_address(dev["pci_address"], s["id"])
            if address is None:
                LOG.warning("no PCI function for %s/%s: skipped", dev["id"], s["id"])
                continue
            handle = self._attach_handle(address, in_use=not me.holds(s))
            deployables.append(self._deployable(dev, s, [handle]))
        # A PF without VFs has nothing to attach: a stub, which Cyborg keeps out of Placement.
        return self._device(
            dev, cpid_info(dev["pci_address"]), deployables, stub=not deployables
        )

    def _deployable(self, dev, s, handles):
        dep = driver_deployable.DriverDeployable()
        dep.name = "_".join((self.hostname, dev["id"], s["id"]))
        dep.num_accelerators = len(handles)
        dep.driver_name = DRIVER_NAME
        dep.attach_handle_list = handles
        dep.attribute_list = self._attributes(dev, s)
        return dep

    def _attributes(self, dev, s):
        dev_type = device_type(dev["kind"])
        traits = [
            "CUSTOM_%s_ACCELGATE" % dev_type,
            "CUSTOM_ACCELGATE_%s_%s" % (s["kind"].upper(), dev["id"].upper()),
        ]
        attrs = [("rc", resource_class(dev_type))]
        attrs += [("trait%d" % i, t) for i, t in enumerate(traits)]
        result = []
        for key, value in attrs:
            attr = driver_attribute.DriverAttribute()
            attr.key, attr.value = key, value
            result.append(attr)
        return result

    @staticmethod
    def _attach_handle(address, in_use):
        handle = driver_attach_handle.DriverAttachHandle()
        handle.attach_type = constants.AH_TYPE_PCI
        handle.attach_info = json.dumps(OrderedDict(sorted(pci_fields(address).items())))
        handle.in_use = in_use
        return handle

    def vf_address(self, pf_address, vf_slice):
        """The PCI address of VF slice ``vfN``, from sysfs's ``virtfnN`` link of the PF."""
        if not vf_slice.startswith("vf") or not vf_slice[2:].isdigit():
            return None
        link = os.path.join(
            self.sysfs_root, "bus/pci/devices", pf_address, "virtfn%s" % vf_slice[2:]
        )
        try:
            return os.path.basename(os.readlink(link))
        except OSError:
            return None

    # ---- program ----

    def _target(self, controlpath_id):
        """The accelgate device and slice a Cyborg control path names."""
        cpid_type = controlpath_id["cpid_type"]
        if cpid_type != constants.CPID_TYPE_PCI:
            raise exception.InvalidType(
                obj="controlpath_id", type=cpid_type, expected=constants.CPID_TYPE_PCI
            )
        info = controlpath_id["cpid_info"]
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                raise exception.InvalidParameterValue(err="cpid_info is not JSON: %r" % info)
        try:
            address = "%s:%s:%s.%s" % (
                info["domain"],
                info["bus"],
                info["device"],
                info["function"],
            )
        except (KeyError, TypeError):
            raise exception.InvalidParameterValue(err="cpid_info is not a PCI address: %r" % info)
        devices = self._call("devices", self.accelctl.devices)
        dev = next(
            (d for d in devices if d["pci_address"].lower() == address.lower()), None
        )
        if dev is None:
            raise exception.ResourceNotFound(
                resource="accelgate device", msg="at PCI %s" % address
            )
        slice_id = info.get("slice")
        if slice_id is None:
            # A control path without a slice (a PF): only unambiguous with one region.
            slices = self._call("slices %s" % dev["id"], self.accelctl.slices, dev["id"])
            regions = [s["id"] for s in slices if s["kind"] == "region"]
            if len(regions) != 1:
                raise exception.ExpectedOneObject(obj="programmable slice", count=len(regions))
            slice_id = regions[0]
        return dev["id"], slice_id

    def program(self, controlpath_id, image_file_path):
        """Loads the bitstream into the slice the control path names.

        Idempotent on the device: accelgated compares the image's SHA-256 with the one it
        loaded into the slice, and when they match the job ends at once and nothing is
        written. Returns True; a failure raises the Cyborg exception for it (NotAuthorized,
        ResourceNotFound, DeviceBusy, InvalidParameterValue, ServiceUnavailable, or
        FPGAProgramError), so that the ARQ bind fails instead of binding an unprogrammed slice.
        """
        device, slice_id = self._target(controlpath_id)
        target = "%s/%s" % (device, slice_id)

        def progress(percent):
            LOG.info("programming %s: %d%%", target, percent)

        result = self._call(
            "program %s" % target,
            self.accelctl.program,
            device,
            slice_id,
            image_file_path,
            on_progress=progress,
        )
        LOG.info("program %s: %s", target, result.get("message", ""))
        return True

    # ---- update and stats ----

    def update(self, control_path, image_path):
        """Flashes device firmware through accelgated (signature ``IMAGE.minisig`` if present).

        Returns True on success, False otherwise (GenericDriver's contract). Firmware is
        normally Ironic's job: a cyborg role without ``device.flash`` makes this return False.
        """
        try:
            device, _ = self._target(control_path)
        except exception.CyborgException as e:
            LOG.error("firmware update: %s", e)
            return False
        signature = image_path + ".minisig"
        try:
            self.accelctl.flash(
                device,
                image_path,
                signature if os.path.exists(signature) else None,
                on_progress=lambda p: LOG.info("flashing %s: %d%%", device, p),
            )
        except AccelctlError as e:
            LOG.error("firmware update of %s failed: %s", device, e)
            return False
        return True

    def get_stats(self):
        """Per accelgate device: firmware version, and per slice its tenant and image."""
        stats = {}
        for dev in self._call("devices", self.accelctl.devices):
            slices = self._call("slices %s" % dev["id"], self.accelctl.slices, dev["id"])
            stats[dev["id"]] = {
                "pci_address": dev["pci_address"],
                "firmware_version": dev.get("firmware_version", ""),
                "num_vfs": dev.get("num_vfs", 0),
                "slices": {
                    s["id"]: {
                        "kind": s["kind"],
                        "tenant": s.get("tenant", ""),
                        "image_sha256": s.get("image_sha256", ""),
                    }
                    for s in slices
                },
            }
        return stats
