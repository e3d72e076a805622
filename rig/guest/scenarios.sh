#!/bin/sh
# The scenarios, run inside the rig's guest against the real kernel. Each prints one line
#   RIG-RESULT <name> pass|fail <detail>
# Clients run as different users through su; images come from /rig/images (made on the host).
IMG=/rig/images
TF=/sys/devices/virtual/misc/test_firmware

pass() { n=$1; shift; echo "RIG-RESULT $n pass $*"; }
fail() { n=$1; shift; echo "RIG-RESULT $n fail $(echo "$*" | tr '\n' ' ' | cut -c1-600)"; }
# ctl USER ARGS...: runs accelctl as USER; output in $out, exit status in $rc.
ctl() {
  u=$1; shift
  out=$(timeout 60 su -s /bin/sh "$u" -c "/usr/bin/accelctl $*" 2>&1)
  rc=$?
}
# What the test_firmware driver holds for an upload entry.
uploaded() { echo -n "$1" >"$TF/config_upload_name"; cat "$TF/upload_read"; }
vf_bdf() { readlink "/sys/bus/pci/devices/$1/virtfn$2" | sed 's|.*/||'; }
check() { # check NAME CONDITION-DESCRIPTION: pass if $ok is empty, else fail with $ok
  if [ -z "$ok" ]; then pass "$1" "$2"; else fail "$1" "$ok"; fi
}

# --- discovery ------------------------------------------------------------------------
ok=
ctl root devices; devs=$out
for d in edu0 nvme0 igb0; do echo "$devs" | grep -qw "$d" || ok="$ok $d missing;"; done
ctl root slices edu0
echo "$out" | grep -qw regs && echo "$out" | grep -qw region0 || ok="$ok edu0 slices: $out;"
check discovery "devices edu0 nvme0 igb0 with their slices"

# A BAR a kernel driver owns cannot be mapped (CONFIG_IO_STRICT_DEVMEM): igb1's BAR0 belongs
# to igb; the daemon must leave the device out and say which driver holds it.
ok=
echo "$devs" | grep -qw igb1 && ok="igb1 is served although igb owns its BAR0;"
grep -q 'igb1.*driver igb' /tmp/accelgated.log || ok="$ok log does not name the driver: $(grep igb1 /tmp/accelgated.log)"
check bar-claimed-refused "igb1 left out, the log names driver igb"

# --- registers on edu ------------------------------------------------------------------
ok=
ctl root assign edu0/regs ag-tenant1 || ok="assign: $out;"
ctl ag-tenant1 read edu0/regs 0x0
echo "$out" | grep -qi 0x010000ed || ok="$ok ID read $rc: $out;"
check register-read "edu ID 0x010000ed at 0x0 as the assigned tenant"

ok=
ctl ag-tenant1 write edu0/regs 0x4 0x12345678 || ok="write: $out;"
ctl ag-tenant1 read edu0/regs 0x4
echo "$out" | grep -qi 0xedcba987 || ok="$ok liveness read-back: $out;"
ctl ag-tenant1 write edu0/regs 0x8 5 || ok="$ok factorial write: $out;"
sleep 0.2
ctl ag-tenant1 read edu0/regs 0x8
echo "$out" | grep -qi 0x00000078 || ok="$ok factorial 5!: $out;"
check register-write "0x4 reads back inverted, 0x8 computes 5! = 0x78"

ok=
ctl ag-tenant1 write edu0/regs 0x0 1
[ $rc -ne 0 ] && echo "$out" | grep -qi writable || ok="write to read-only ID accepted: $rc $out;"
ctl ag-tenant2 read edu0/regs 0x0
[ $rc -eq 3 ] || ok="$ok tenant2 read of an unassigned slice: $rc $out;"
ctl ag-tenant1 read edu0/regs 0x1000
[ $rc -ne 0 ] || ok="$ok read past the window accepted: $out;"
ctl ag-tenant1 map-test edu0/regs
[ $rc -ne 0 ] || ok="$ok Map of a shared-BAR window accepted: $out;"
check register-refusals "read-only register, other tenant, past the window, Map of a window"

# --- SR-IOV on nvme (PF without a driver) ---------------------------------------------
NVME=0000:01:00.0
ok=
ctl ag-operator vfs nvme0 2 || ok="vfs 2: $out;"
pf_drv=$(readlink /sys/bus/pci/devices/$NVME/driver); pf_drv=${pf_drv##*/}
[ "$pf_drv" = pci-pf-stub ] || ok="$ok PF driver is '$pf_drv';"
ctl root slices nvme0
echo "$out" | grep -qw vf0 && echo "$out" | grep -qw vf1 || ok="$ok slices after 2: $out;"
for i in 0 1; do
  bdf=$(vf_bdf $NVME $i)
  [ -z "$(readlink /sys/bus/pci/devices/$bdf/driver)" ] || ok="$ok VF $bdf has a driver;"
done
ctl root assign nvme0/vf0 ag-tenant1 || ok="$ok assign vf0: $out;"
ctl ag-tenant1 read nvme0/vf0 0x8 || ok="$ok read vf0: $out;"
ctl ag-tenant1 map-test nvme0/vf0 || ok="$ok map vf0: $out;"
ctl ag-operator vfs nvme0 1 --force || ok="$ok resize 2->1: $out;"
ctl root slices nvme0
echo "$out" | grep -qw vf1 && ok="$ok vf1 still listed after resize;"
ctl ag-tenant1 map-test nvme0/vf0 || ok="$ok map vf0 after resize: $out;"
ctl ag-operator vfs nvme0 0 --force || ok="$ok destroy: $out;"
[ "$(cat /sys/bus/pci/devices/$NVME/sriov_numvfs)" = 0 ] || ok="$ok sriov_numvfs not 0;"
ctl ag-tenant1 read nvme0/vf0 0x8
[ $rc -ne 0 ] || ok="$ok read of a removed VF accepted;"
check vf-lifecycle "nvme0: pci-pf-stub bound, VFs 2 -> 1 -> 0 with reads and Map in between"

# --- SR-IOV on igb (PF bound to igb; igbvf would claim VFs) -----------------------------
IGB=0000:02:00.0
ok=
ctl ag-operator vfs igb0 4 || ok="vfs 4: $out;"
expect="0000:02:10.0 0000:02:10.2 0000:02:10.4 0000:02:10.6"
got=$(for i in 0 1 2 3; do vf_bdf $IGB $i; done | tr '\n' ' ' | sed 's/ $//')
[ "$got" = "$expect" ] || ok="$ok VF addresses '$got';"
[ "$(cat /sys/bus/pci/devices/$IGB/sriov_drivers_autoprobe)" = 0 ] || ok="$ok autoprobe still on;"
for i in 0 1 2 3; do
  bdf=$(vf_bdf $IGB $i)
  drv=$(readlink /sys/bus/pci/devices/$bdf/driver)
  [ -z "$drv" ] || ok="$ok VF $bdf bound to ${drv##*/};"
done
ctl root assign igb0/vf3 ag-tenant2 || ok="$ok assign vf3: $out;"
ctl ag-tenant2 map-test igb0/vf3 || ok="$ok map vf3: $out;"
ctl ag-tenant2 read igb0/vf3 0x0 || ok="$ok read vf3: $out;"
ctl ag-operator vfs igb0 0 --force || ok="$ok destroy: $out;"
check vf-igb "igb0: VFs at offset 128 stride 2, no VF driver bound, Map works"

# --- Program through the firmware-upload class (test_firmware) --------------------------
ok=
ctl root assign edu0/region0 ag-tenant1 || ok="assign region0: $out;"
t0=$(cut -d' ' -f1 /proc/uptime)
ctl ag-tenant1 program edu0/region0 $IMG/app.bin || ok="$ok program: $out;"
t1=$(cut -d' ' -f1 /proc/uptime)
[ "$(uploaded rig-region0 | sha256sum | cut -d' ' -f1)" = "$(sha256sum <$IMG/app.bin | cut -d' ' -f1)" ] ||
  ok="$ok the driver holds other bytes than app.bin;"
ctl ag-tenant1 show edu0/region0
echo "$out" | grep -q "$(sha256sum <$IMG/app.bin | cut -d' ' -f1)" || ok="$ok image hash not shown: $out;"
check program-complete "1 KiB image uploaded ($t0 -> $t1 s), driver holds its bytes"

ok=
ctl ag-tenant1 program edu0/region0 $IMG/app.bin || ok="again: $out;"
[ "$(uploaded rig-region0 | sha256sum | cut -d' ' -f1)" = "$(sha256sum <$IMG/app.bin | cut -d' ' -f1)" ] ||
  ok="$ok driver bytes changed;"
check program-idempotent "the same image again succeeds"

ok=
ctl ag-tenant1 program edu0/region0 $IMG/oversize.bin
[ $rc -ne 0 ] && echo "$out" | grep -q 'preparing:invalid-file-size' || ok="oversize: $rc $out;"
check program-invalid-size "3000 bytes: the kernel's preparing:invalid-file-size is reported"

ok=
ctl ag-tenant1 program edu0/region0 $IMG/inject-hw-error.bin
[ $rc -ne 0 ] && echo "$out" | grep -q 'transferring:hw-error' || ok="hw-error: $rc $out;"
check program-hw-error "injected transferring:hw-error is reported"

ok=
su -s /bin/sh ag-tenant1 -c "/usr/bin/accelctl program edu0/region0 $IMG/inject-user-abort.bin" \
  >/tmp/cancel.out 2>&1 &
cpid=$!
job=
i=0
while [ -z "$job" ] && [ $i -lt 100 ]; do
  job=$(busctl --system --timeout=2 --list tree org.accelgate.Accel1 2>/dev/null | grep '/jobs/' | tail -n1)
  [ -n "$job" ] || { sleep 0.1; i=$((i + 1)); }
done
# Wait until the driver sits in "preparing" (it waits there for the cancel).
i=0
until [ "$(cat /sys/class/firmware/rig-region0/status)" = preparing ] || [ $i -gt 100 ]; do
  sleep 0.05; i=$((i + 1))
done
su -s /bin/sh ag-tenant1 -c "busctl --system --timeout=5 call org.accelgate.Accel1 $job org.accelgate.Accel1.Job Cancel" \
  >/tmp/cancel-call.out 2>&1 || ok="Cancel of $job: $(cat /tmp/cancel-call.out);"
i=0
while kill -0 $cpid 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
kill -9 $cpid 2>/dev/null
wait $cpid
crc=$?
[ $crc -ne 0 ] && grep -qi cancel /tmp/cancel.out || ok="$ok program after cancel: $crc $(cat /tmp/cancel.out);"
[ "$(cat /sys/class/firmware/rig-region0/error)" = "preparing:user-abort" ] ||
  ok="$ok kernel error '$(cat /sys/class/firmware/rig-region0/error)';"
check program-cancel "Cancel while the driver prepares: cancelled, error preparing:user-abort"

# Configure: whole-device personality through another upload entry.
ok=
ctl ag-operator configure edu0 $IMG/personality.bin --force || ok="configure: $out;"
[ "$(uploaded rig-personality | sha256sum | cut -d' ' -f1)" = "$(sha256sum <$IMG/personality.bin | cut -d' ' -f1)" ] ||
  ok="$ok driver holds other bytes;"
check configure "personality image uploaded"

# --- release scrub ---------------------------------------------------------------------
ok=
ctl ag-tenant1 program edu0/region0 $IMG/app.bin || ok="program: $out;"
ctl ag-tenant1 write edu0/regs 0x8 4
ctl root release edu0/regs || ok="$ok release regs: $out;"
ctl root read edu0/regs 0x4
echo "$out" | grep -qi 0xffffffff || ok="$ok 0x4 after scrub (0 written reads back inverted): $out;"
ctl root release edu0/region0 || ok="$ok release region0: $out;"
blank=$(uploaded rig-region0 | wc -c)
[ "$blank" -gt 0 ] && [ -z "$(uploaded rig-region0 | tr -d '\0')" ] ||
  ok="$ok the driver holds no blank image ($blank bytes, not all zero);"
ctl ag-tenant1 read edu0/region0 0x0
[ $rc -eq 3 ] || ok="$ok former tenant can still read: $rc $out;"
check release-scrub "registers zeroed, blank image uploaded, former tenant refused"

# --- firmware flash ----------------------------------------------------------------------
ok=
ctl root firmware flash edu0 $IMG/fw.bin --signature $IMG/fw.bin.minisig || ok="flash: $out;"
ctl root firmware status edu0
echo "$out" | grep -q 2.0.0 || ok="$ok status: $out;"
check flash-mtd-persistent "edu0: signed 100 KB firmware to MTD partitions on phram (ivshmem file)"

ok=
ctl root firmware flash nvme0 $IMG/fw.bin --signature $IMG/fw.bin.minisig || ok="flash: $out;"
ctl root firmware status nvme0
echo "$out" | grep -q 2.0.0 || ok="$ok status: $out;"
ctl root firmware flash nvme0 $IMG/fw.bin --signature $IMG/fw-bad.minisig
[ $rc -ne 0 ] || ok="$ok a bad signature was accepted;"
check flash-mtd-ram "nvme0: signed firmware to MTD partitions on mtdram; bad signature refused"

ok=
ctl root firmware flash igb0 $IMG/fw-small.bin --signature $IMG/fw-small.bin.minisig
[ $rc -ne 0 ] && echo "$out" | grep -q 'fw_slots' || ok="flash on an entry without slots: $rc $out;"
check flash-fwupload-no-slots "test_firmware has no A/B slot attributes: the refusal says so"
