#!/bin/sh
# The scenarios, one suite for two backends: the real kernel (the rig's guest, rig/guest/init)
# and the simulator (tests/scenarios_sim.rs runs this very file on `accelgated --simulate
# --simulate-spec rig`). Each prints one line
#   RIG-RESULT <name> pass|fail|skip <detail>
# A scenario that only makes sense on one backend says so with only_on, which reports a skip
# naming the reason; the host tests assert which scenarios skip on which backend.
# Clients run as different users through su.
#
# The environment says where things are (defaults: the rig's guest):
#   RIG_BACKEND     kernel | sim (required)
#   RIG_ROOT        hardware root: empty for the kernel's /, the simulator's directory
#   RIG_IMAGES      the images rig/make-images made
#   RIG_ACCELCTL    the accelctl binary
#   RIG_BUS         a D-Bus address; empty for the system bus
#   RIG_DAEMON_LOG  the daemon's log;  RIG_DAEMON_PID  its pid;  RIG_WORK  a scratch directory
case ${RIG_BACKEND:-} in
  kernel | sim) ;;
  *) echo "RIG-RESULT setup fail RIG_BACKEND must be kernel or sim"; exit 1 ;;
esac
ROOT=${RIG_ROOT:-}
SYS=$ROOT/sys
IMG=${RIG_IMAGES:-/rig/images}
ACCELCTL=${RIG_ACCELCTL:-/usr/bin/accelctl}
LOG=${RIG_DAEMON_LOG:-/tmp/accelgated.log}
PID=${RIG_DAEMON_PID:-$(cat /run/accelgated.pid 2>/dev/null)}
WORK=${RIG_WORK:-/tmp}
TF=/sys/devices/virtual/misc/test_firmware
if [ -n "${RIG_BUS:-}" ]; then
  CTL="$ACCELCTL --bus $RIG_BUS"
  BUSCTL="busctl --address=$RIG_BUS"
else
  CTL=$ACCELCTL
  BUSCTL="busctl --system"
fi

pass() { n=$1; shift; echo "RIG-RESULT $n pass $*"; }
fail() { n=$1; shift; echo "RIG-RESULT $n fail $(echo "$*" | tr '\n' ' ' | cut -c1-600)"; }
# only_on BACKEND NAME REASON: true where the scenario runs; elsewhere reports the skip.
only_on() {
  [ "$RIG_BACKEND" = "$1" ] && return 0
  echo "RIG-RESULT $2 skip only on the $1 backend: $3"
  return 1
}
# ctl USER ARGS...: runs accelctl as USER; output in $out, exit status in $rc.
ctl() {
  u=$1; shift
  out=$(timeout 60 su -s /bin/sh "$u" -c "$CTL $*" 2>&1)
  rc=$?
  # Timed out: coreutils' timeout says 124, busybox's (the guest's) the signal's 143.
  case $rc in 124 | 143) hang_report "accelctl $*" ;; esac
  return $rc
}
# hang_report WHAT: a call timed out; print where each of the daemon's threads is (state,
# syscall, kernel stack) and the log's tail, so a hang is diagnosable from the console alone.
hang_report() {
  echo "RIG-HANG $1 timed out after 60 s; daemon $PID threads:"
  for t in /proc/"$PID"/task/*; do
    [ -d "$t" ] || continue
    echo "RIG-HANG  ${t##*/} $(cat "$t/comm" 2>/dev/null) state=$(cut -d' ' -f3 "$t/stat" 2>/dev/null)" \
      "wchan=$(cat "$t/wchan" 2>/dev/null) syscall=$(cat "$t/syscall" 2>/dev/null | cut -d' ' -f1-3)"
    sed 's/^/RIG-HANG     /' "$t/stack" 2>/dev/null | head -12
  done
  for f in /proc/"$PID"/fd/*; do echo "RIG-HANG  fd ${f##*/} -> $(readlink "$f")"; done
  # Is it the bus or the daemon? The bus daemon answers for itself; Peer.Ping is answered by
  # the daemon's connection without reaching the engine.
  echo "RIG-HANG bus: $(timeout 5 $BUSCTL call org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus GetId 2>&1 | head -1)"
  echo "RIG-HANG daemon ping: $(timeout 5 $BUSCTL call org.accelgate.Accel1 /org/accelgate/Accel1 \
    org.freedesktop.DBus.Peer Ping 2>&1 | head -1) rc=$?"
  tail -n 20 "$LOG" 2>/dev/null | sed 's/^/RIG-HANG log: /'
}
# What the test_firmware driver holds for an upload entry: the kernel's driver answers through
# upload_read; the simulated one keeps the bytes in a file of its own.
uploaded() {
  if [ "$RIG_BACKEND" = kernel ]; then
    echo -n "$1" >"$TF/config_upload_name"
    cat "$TF/upload_read"
  else
    cat "$ROOT/test_firmware/$1" 2>/dev/null
  fi
}
sha() { sha256sum | cut -d' ' -f1; }
vf_bdf() { readlink "$SYS/bus/pci/devices/$1/virtfn$2" | sed 's|.*/||'; }
# holder_sigbus PID STILL-RUNNING-MESSAGE [OUTPUT]: waits up to 5 s for a mapping holder
# (su's child) to end; it must end of SIGBUS (su's status 135). Its status goes in $hrc.
holder_sigbus() {
  i=0
  while kill -0 "$1" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  if kill -0 "$1" 2>/dev/null; then
    ok="$ok $2;"
    kill "$1" 2>/dev/null
  fi
  wait "$1" 2>/dev/null
  hrc=$?
  [ $hrc -eq 135 ] ||
    ok="$ok the holder ended with status $hrc, not 135 (SIGBUS)${3:+: $(tr '\n' ' ' <"$3" | cut -c1-200)};"
}
check() { # check NAME CONDITION-DESCRIPTION: pass if $ok is empty, else fail with $ok
  if [ -z "$ok" ]; then pass "$1" "$2"; else fail "$1" "$ok"; fi
}
# mtd_dev NAME: the device node (under the root) of the MTD partition called NAME.
mtd_dev() {
  for c in "$SYS"/class/mtd/mtd*; do
    case ${c##*/} in *ro) continue ;; esac
    [ "$(cat "$c/name")" = "$1" ] && { echo "$ROOT/dev/${c##*/}"; return 0; }
  done
  return 1
}
# mtd_holds NAME FILE: the partition holds FILE's bytes from its second erase block on (the
# daemon's slot layout: header block, then the image).
mtd_holds() {
  dev=$(mtd_dev "$1") || return 1
  erase=$(cat "$SYS/class/mtd/${dev##*/}/erasesize")
  len=$(wc -c <"$2")
  [ "$(dd if="$dev" bs="$erase" skip=1 count=$(((len + erase - 1) / erase)) 2>/dev/null |
    head -c "$len" | sha)" = "$(sha <"$2")" ]
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
if only_on kernel bar-claimed-refused "a simulated BAR is a file, which always maps"; then
  ok=
  echo "$devs" | grep -qw igb1 && ok="igb1 is served although igb owns its BAR0;"
  grep -q 'igb1.*driver igb' "$LOG" || ok="$ok log does not name the driver: $(grep igb1 "$LOG")"
  check bar-claimed-refused "igb1 left out, the log names driver igb"
fi

# --- registers on edu ------------------------------------------------------------------
ok=
ctl root assign edu0/regs ag-tenant1 || ok="assign: $out;"
ctl ag-tenant1 read edu0/regs 0x0
echo "$out" | grep -qi 0x010000ed || ok="$ok ID read $rc: $out;"
check register-read "edu ID 0x010000ed at 0x0 as the assigned tenant"

if only_on kernel register-write "edu's register logic (inversion, factorial) is QEMU's device model; a simulated BAR is plain memory"; then
  ok=
  ctl ag-tenant1 write edu0/regs 0x4 0x12345678 || ok="write: $out;"
  ctl ag-tenant1 read edu0/regs 0x4
  echo "$out" | grep -qi 0xedcba987 || ok="$ok liveness read-back: $out;"
  ctl ag-tenant1 write edu0/regs 0x8 5 || ok="$ok factorial write: $out;"
  sleep 0.2
  ctl ag-tenant1 read edu0/regs 0x8
  echo "$out" | grep -qi 0x00000078 || ok="$ok factorial 5!: $out;"
  check register-write "0x4 reads back inverted, 0x8 computes 5! = 0x78"
fi

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
pf_drv=$(readlink $SYS/bus/pci/devices/$NVME/driver); pf_drv=${pf_drv##*/}
[ "$pf_drv" = pci-pf-stub ] || ok="$ok PF driver is '$pf_drv';"
ctl root slices nvme0
echo "$out" | grep -qw vf0 && echo "$out" | grep -qw vf1 || ok="$ok slices after 2: $out;"
for i in 0 1; do
  bdf=$(vf_bdf $NVME $i)
  [ -z "$(readlink $SYS/bus/pci/devices/$bdf/driver)" ] || ok="$ok VF $bdf has a driver;"
done
ctl root assign nvme0/vf0 ag-tenant1 || ok="$ok assign vf0: $out;"
ctl ag-tenant1 read nvme0/vf0 0x8 || ok="$ok read vf0: $out;"
# nvme0's policy names no revoke_driver: nothing could end a mapping of its VFs, so the
# daemon hands out none (docs/security.md, Revocation).
ctl ag-tenant1 map-test nvme0/vf0
[ $rc -ne 0 ] && echo "$out" | grep -q "names no revoke_driver" ||
  ok="$ok Map of a VF whose mappings cannot be revoked: $rc $out;"
ctl ag-operator vfs nvme0 1 --force || ok="$ok resize 2->1: $out;"
ctl root slices nvme0
echo "$out" | grep -qw vf1 && ok="$ok vf1 still listed after resize;"
ctl ag-tenant1 read nvme0/vf0 0x8 || ok="$ok read vf0 after resize: $out;"
ctl ag-operator vfs nvme0 0 --force || ok="$ok destroy: $out;"
[ "$(cat $SYS/bus/pci/devices/$NVME/sriov_numvfs)" = 0 ] || ok="$ok sriov_numvfs not 0;"
ctl ag-tenant1 read nvme0/vf0 0x8
[ $rc -ne 0 ] || ok="$ok read of a removed VF accepted;"
check vf-lifecycle "nvme0: pci-pf-stub bound, VFs 2 -> 1 -> 0 with reads in between; Map refused (no revoke_driver)"

# --- SR-IOV on igb (PF bound to igb; igbvf would claim VFs) -----------------------------
IGB=0000:02:00.0
ok=
ctl ag-operator vfs igb0 4 || ok="vfs 4: $out;"
expect="0000:02:10.0 0000:02:10.2 0000:02:10.4 0000:02:10.6"
got=$(for i in 0 1 2 3; do vf_bdf $IGB $i; done | tr '\n' ' ' | sed 's/ $//')
[ "$got" = "$expect" ] || ok="$ok VF addresses '$got';"
[ "$(cat $SYS/bus/pci/devices/$IGB/sriov_drivers_autoprobe)" = 0 ] || ok="$ok autoprobe still on;"
for i in 0 1 2 3; do
  bdf=$(vf_bdf $IGB $i)
  drv=$(readlink $SYS/bus/pci/devices/$bdf/driver)
  [ -z "$drv" ] || ok="$ok VF $bdf bound to ${drv##*/};"
done
ctl root assign igb0/vf3 ag-tenant2 || ok="$ok assign vf3: $out;"
ctl ag-tenant2 map-test igb0/vf3 || ok="$ok map vf3: $out;"
ctl ag-tenant2 read igb0/vf3 0x0 || ok="$ok read vf3: $out;"
ctl ag-operator vfs igb0 0 --force || ok="$ok destroy: $out;"
check vf-igb "igb0: VFs at offset 128 stride 2, no VF driver bound, Map works"

# --- a tenant's mapping across VF re-creation -------------------------------------------
# What the kernel does to a tenant's mmap of a VF's resource0 when the VFs are removed
# (sriov_numvfs -> 0) and created again. Measured on Debian's 6.12: nothing. The mapping is
# neither torn down (no SIGBUS, stores keep going) nor redirected, so once the VFs exist
# again it reaches the new VF at the same address. docs/security.md says so; this scenario
# fails if a kernel starts revoking (then the doc and the daemon's design must change).
# ag-tenant1 keeps storing VAL through its mapping of igb0/vf1 (map-test --hold, every
# 20 ms); the VFs go 2 -> 0 -> 2, vf1 goes to ag-tenant2, who clears the register (the VF
# mailbox memory VMBMEM, 0x800, holds what is written) and reads it back; then, the holder
# gone, ag-tenant2 clears it again and must read 0 (its own writes land).
# With igb0's revoke_driver the daemon keeps vf1's "mapped" mark across the re-creation (it
# knows removal revokes nothing), so the admin measures the fact before the Release that
# revokes the holder's mapping; vf1 then goes to ag-tenant2.
if only_on kernel vf-map-after-removal "it measures what the kernel does to a removed VF's mappings; a simulated BAR is a file, and a mapping of a file outlives its unlinking"; then
  ok=
  REG=0x800 VAL=0x12345600
  enable_vf1() {
    # No driver binds the VF, so nothing turned its memory decoding on (its BAR reads 0 and
    # drops writes until then); the kernel's `enable` does what a driver's probe would.
    vf1=$(vf_bdf $IGB 1)
    echo 1 >"$SYS/bus/pci/devices/$vf1/enable" || ok="$ok enable $vf1;"
  }
  ctl ag-operator vfs igb0 2 || ok="vfs 2: $out;"
  enable_vf1
  ctl root assign igb0/vf1 ag-tenant1 || ok="$ok assign: $out;"
  ctl ag-tenant1 write igb0/vf1 $REG 0x00abcd00 || ok="$ok probe write: $out;"
  ctl ag-tenant1 read igb0/vf1 $REG
  echo "$out" | grep -qi 0x00abcd00 || ok="$ok VMBMEM does not hold a value: $out;"
  su -s /bin/sh ag-tenant1 -c "$CTL map-test igb0/vf1 --write $VAL --offset $REG --hold" \
    >$WORK/hold.out 2>&1 &
  hpid=$!
  sleep 1
  kill -0 $hpid 2>/dev/null || ok="$ok the holder exited early: $(cat $WORK/hold.out);"
  ctl ag-tenant1 read igb0/vf1 $REG
  echo "$out" | grep -qi $VAL || ok="$ok the holder's stores do not land: $out;"
  ctl ag-operator vfs igb0 0 --force || ok="$ok vfs 0: $out;"
  [ "$(cat $SYS/bus/pci/devices/$IGB/sriov_numvfs)" = 0 ] && [ ! -e "$SYS/bus/pci/devices/$vf1" ] ||
    ok="$ok the VFs were not removed;"
  sleep 0.5
  if kill -0 $hpid 2>/dev/null; then
    holder="survived the removal (no SIGBUS; its stores went on)"
  else
    wait $hpid
    hrc=$?
    ok="$ok the holder ended with status $hrc$([ $hrc -eq 135 ] && echo ' (SIGBUS: the kernel revoked the mapping)'): $(tr '\n' ' ' <$WORK/hold.out | cut -c1-200);"
  fi
  ctl ag-operator vfs igb0 2 || ok="$ok vfs 2 again: $out;"
  enable_vf1
  # The recreated vf1 is free (its assignment went with the old one) but still marked as
  # mapped, since igb0 has a revoke_driver: the admin writes 0 and reads back the holder's
  # value, which is the kernel fact this scenario measures.
  ctl root write igb0/vf1 $REG 0 || ok="$ok admin write: $out;"
  sleep 0.3
  ctl root read igb0/vf1 $REG
  echo "$out" | grep -qi $VAL || ok="$ok the old mapping does not reach the new VF: the admin reads $out;"
  # Release of the marked VF revokes the mapping through igbvf (vf-revoke-by-driver).
  ctl root release igb0/vf1 || ok="$ok release (revocation): $out;"
  holder_sigbus $hpid "the holder survived the revocation"
  ctl root assign igb0/vf1 ag-tenant2 || ok="$ok assign to tenant2: $out;"
  ctl ag-tenant2 write igb0/vf1 $REG 0 || ok="$ok tenant2 write after the holder: $out;"
  sleep 0.3
  ctl ag-tenant2 read igb0/vf1 $REG
  echo "$out" | grep -qi 0x00000000 || ok="$ok tenant2's own write does not land: $out;"
  ctl root release igb0/vf1 >/dev/null 2>&1
  ctl ag-operator vfs igb0 0 --force || ok="$ok vfs 0 at the end: $out;"
  check vf-map-after-removal "VFs 2 -> 0 -> 2 under ag-tenant1's live mapping of vf1: the holder $holder, and its stores reach the recreated vf1 (the admin reads $VAL after writing 0); the Release of the still-marked vf1 then revoked it (SIGBUS) and ag-tenant2's own write lands"
fi

# --- revocation by the VF's driver (igb0: revoke_driver = "igbvf") --------------------
# ag-tenant1 stores through its mapping of igb0/vf1 every 20 ms; the operator releases vf1.
# The daemon binds igbvf to the VF (the kernel's revoke_iomem zaps every user mapping of the
# BAR; the simulator truncates the old resource0), checks that a new mmap fails, unbinds,
# resets the function and maps its own window again. The holder must die of SIGBUS (su's
# status 135); vf1 must go to no one else until the VFs are recreated (the fd Map handed out
# outlives the revocation), then to ag-tenant2, whose own write must stay; no driver may be
# left bound and the daemon must live.
ok=
REG=0x800 VAL=0x12345611
ctl ag-operator vfs igb0 2 || ok="vfs 2: $out;"
vf1=$(vf_bdf $IGB 1)
if [ "$RIG_BACKEND" = kernel ]; then
  # As in vf-map-after-removal: the kernel's `enable` turns memory decoding on.
  echo 1 >"$SYS/bus/pci/devices/$vf1/enable" || ok="$ok enable $vf1;"
fi
ctl root assign igb0/vf1 ag-tenant1 || ok="$ok assign: $out;"
su -s /bin/sh ag-tenant1 -c "$CTL map-test igb0/vf1 --write $VAL --offset $REG --hold" \
  >$WORK/revoke-hold.out 2>&1 &
hpid=$!
remap() { # remap: one more mmap of the kept fd; sets $remapped to its answer
  n=$(grep -c '^remap:' $WORK/keep-fd.out)
  if ! kill -0 $kpid 2>/dev/null; then # a write to a FIFO without reader would end the script
    remapped="the fd keeper is gone: $(tr '\n' ' ' <$WORK/keep-fd.out)"
    return
  fi
  echo >&7
  i=0
  until [ "$(grep -c '^remap:' $WORK/keep-fd.out)" -gt "$n" ] || [ $i -ge 50 ]; do
    sleep 0.1; i=$((i + 1))
  done
  remapped=$(grep '^remap:' $WORK/keep-fd.out | tail -n 1)
}
i=0
until ctl ag-tenant1 read igb0/vf1 $REG && echo "$out" | grep -qi $VAL || [ $i -ge 50 ]; do
  sleep 0.1; i=$((i + 1))
done
echo "$out" | grep -qi $VAL || ok="$ok the holder's stores do not land: $out $(cat $WORK/revoke-hold.out);"
# A second process of ag-tenant1 keeps only the fd (map-test --keep-fd) and maps it again on
# each line it reads: after the revocation, and after the VFs are recreated (started once
# the reads above are done: Map answers Busy while another request holds the slice).
rm -f $WORK/keep-fd.in && mkfifo $WORK/keep-fd.in
su -s /bin/sh ag-tenant1 -c "$CTL map-test igb0/vf1 --keep-fd" <$WORK/keep-fd.in \
  >$WORK/keep-fd.out 2>&1 &
kpid=$!
exec 7>$WORK/keep-fd.in
i=0
until grep -q "mapped" $WORK/keep-fd.out || ! kill -0 $kpid 2>/dev/null || [ $i -ge 100 ]; do
  sleep 0.1; i=$((i + 1))
done
grep -q "mapped" $WORK/keep-fd.out || ok="$ok the fd keeper never mapped: $(cat $WORK/keep-fd.out);"
t0=$(cut -d' ' -f1 /proc/uptime)
ctl ag-operator release igb0/vf1 || ok="$ok release: $out;"
t1=$(cut -d' ' -f1 /proc/uptime)
holder_sigbus $hpid "the holder still runs 5 s after the Release" $WORK/revoke-hold.out
drv=$(readlink "$SYS/bus/pci/devices/$vf1/driver")
[ -z "$drv" ] || ok="$ok $vf1 is left bound to ${drv##*/};"
remap
after_revocation=$remapped
# The kernel: the revocation ended mappings, not the fd, which maps the VF again once the
# driver is unbound (why the VF waits for re-creation). The simulator truncated the old file.
if [ "$RIG_BACKEND" = kernel ]; then
  echo "$remapped" | grep -q "^remap: mapped" ||
    ok="$ok the kept fd did not map the VF again after the revocation: '$remapped';"
fi
# The mapping is gone, but the fd Map gave ag-tenant1 could map vf1 again once igbvf is
# unbound: vf1 goes to no one else until its resource file is removed (VFs recreated).
ctl ag-operator assign igb0/vf1 ag-tenant2
[ $rc -ne 0 ] && echo "$out" | grep -q "recreate" ||
  ok="$ok assign to tenant2 before the VFs are recreated: $rc $out;"
ctl ag-operator vfs igb0 0 --force || ok="$ok vfs 0: $out;"
ctl ag-operator vfs igb0 2 || ok="$ok vfs 2 again: $out;"
# The VFs were removed and created again: the kept fd's file is gone, and its mmap refused.
remap
after_recreation=$remapped
echo "$remapped" | grep -q "^remap: refused" ||
  ok="$ok the kept fd still maps after the VFs were recreated: '$remapped';"
exec 7>&-
wait $kpid 2>/dev/null
vf1=$(vf_bdf $IGB 1)
if [ "$RIG_BACKEND" = kernel ]; then
  echo 1 >"$SYS/bus/pci/devices/$vf1/enable" || ok="$ok enable $vf1 again;"
fi
ctl ag-operator assign igb0/vf1 ag-tenant2 || ok="$ok assign to tenant2 after re-creation: $out;"
ctl ag-tenant2 read igb0/vf1 $REG
first=$out
ctl ag-tenant2 write igb0/vf1 $REG 0x00c0ffee || ok="$ok tenant2 write: $out;"
sleep 0.3
ctl ag-tenant2 read igb0/vf1 $REG
echo "$out" | grep -qi 0x00c0ffee || ok="$ok tenant2's own write does not stay: $out;"
ctl ag-tenant2 map-test igb0/vf1 || ok="$ok tenant2 map: $out;"
kill -0 "$PID" 2>/dev/null || ok="$ok daemon $PID gone after the hand-over;"
ctl root release igb0/vf1 || ok="$ok release tenant2: $out;"
ctl ag-operator vfs igb0 0 --force || ok="$ok vfs 0 at the end: $out;"
check vf-revoke-by-driver "Release of ag-tenant1's mapped vf1 ($t0 -> $t1 s) revoked its mapping through igbvf (holder status $hrc, SIGBUS); a kept fd after the revocation: '$after_revocation', after re-creation: '$after_recreation'; vf1 refused to ag-tenant2 until the VFs were recreated (the old fd), then served (first read: $(echo $first | tr '\n' ' ' | cut -c1-60)), whose write stays; no driver left bound"

# --- Program through the firmware-upload class (test_firmware) --------------------------
ok=
ctl root assign edu0/region0 ag-tenant1 || ok="assign region0: $out;"
t0=$(cut -d' ' -f1 /proc/uptime)
ctl ag-tenant1 program edu0/region0 $IMG/app.bin || ok="$ok program: $out;"
t1=$(cut -d' ' -f1 /proc/uptime)
[ "$(uploaded rig-region0 | sha)" = "$(sha <$IMG/app.bin)" ] ||
  ok="$ok the driver holds other bytes than app.bin;"
ctl ag-tenant1 show edu0/region0
echo "$out" | grep -q "$(sha <$IMG/app.bin)" || ok="$ok image hash not shown: $out;"
check program-complete "1 KiB image uploaded ($t0 -> $t1 s), driver holds its bytes"

ok=
ctl ag-tenant1 program edu0/region0 $IMG/app.bin || ok="again: $out;"
[ "$(uploaded rig-region0 | sha)" = "$(sha <$IMG/app.bin)" ] ||
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
# Jobs that ended are still listed for a while: the new one is the one not listed before.
before=$($BUSCTL --timeout=2 --list tree org.accelgate.Accel1 2>/dev/null | grep '/jobs/')
su -s /bin/sh ag-tenant1 -c "$CTL program edu0/region0 $IMG/inject-user-abort.bin" \
  >$WORK/cancel.out 2>&1 &
cpid=$!
job=
i=0
while [ -z "$job" ] && [ $i -lt 100 ]; do
  job=$($BUSCTL --timeout=2 --list tree org.accelgate.Accel1 2>/dev/null | grep '/jobs/' |
    grep -vxF "$before" | tail -n1)
  [ -n "$job" ] || { sleep 0.1; i=$((i + 1)); }
done
# Wait until the driver sits in "preparing" (it waits there for the cancel).
i=0
until [ "$(cat $SYS/class/firmware/rig-region0/status)" = preparing ] || [ $i -gt 100 ]; do
  sleep 0.05; i=$((i + 1))
done
su -s /bin/sh ag-tenant1 -c "$BUSCTL --timeout=5 call org.accelgate.Accel1 $job org.accelgate.Accel1.Job Cancel" \
  >$WORK/cancel-call.out 2>&1 || ok="Cancel of $job: $(cat $WORK/cancel-call.out);"
i=0
while kill -0 $cpid 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
kill -9 $cpid 2>/dev/null
wait $cpid
crc=$?
[ $crc -ne 0 ] && grep -qi cancel $WORK/cancel.out || ok="$ok program after cancel: $crc $(cat $WORK/cancel.out);"
[ "$(cat $SYS/class/firmware/rig-region0/error)" = "preparing:user-abort" ] ||
  ok="$ok kernel error '$(cat $SYS/class/firmware/rig-region0/error)';"
check program-cancel "Cancel while the driver prepares: cancelled, error preparing:user-abort"

# Configure: whole-device personality through another upload entry.
ok=
ctl ag-operator configure edu0 $IMG/personality.bin --force || ok="configure: $out;"
[ "$(uploaded rig-personality | sha)" = "$(sha <$IMG/personality.bin)" ] ||
  ok="$ok driver holds other bytes;"
check configure "personality image uploaded"

# --- release scrub ---------------------------------------------------------------------
ok=
ctl ag-tenant1 program edu0/region0 $IMG/app.bin || ok="program: $out;"
ctl ag-tenant1 write edu0/regs 0x8 4
ctl root release edu0/regs || ok="$ok release regs: $out;"
ctl root read edu0/regs 0x4
# edu answers the inverse of what was written (0); a simulated BAR is plain memory.
if [ "$RIG_BACKEND" = kernel ]; then zeroed=0xffffffff; else zeroed=0x00000000; fi
echo "$out" | grep -qi $zeroed || ok="$ok 0x4 after scrub (0 written, $zeroed expected): $out;"
ctl root release edu0/region0 || ok="$ok release region0: $out;"
blank=$(uploaded rig-region0 | wc -c)
[ "$blank" -gt 0 ] && [ -z "$(uploaded rig-region0 | tr -d '\0')" ] ||
  ok="$ok the driver holds no blank image ($blank bytes, not all zero);"
ctl ag-tenant1 read edu0/region0 0x0
[ $rc -eq 3 ] || ok="$ok former tenant can still read: $rc $out;"
check release-scrub "registers zeroed, blank image uploaded, former tenant refused"

# --- firmware flash ----------------------------------------------------------------------
# MtdChar's real I/O (MEMGETINFO, MEMERASE, pwrite, pread) under seccomp kill mode: the daemon
# must survive the flash (same pid, still answering) and the slot must hold the image's bytes.
ok=
kill -0 "$PID" 2>/dev/null || ok="daemon $PID not running before the flash;"
ctl root firmware flash edu0 $IMG/fw.bin --signature $IMG/fw.bin.minisig || ok="$ok flash: $out;"
kill -0 "$PID" 2>/dev/null || ok="$ok daemon $PID gone after the flash (seccomp kill?);"
ctl root firmware status edu0
echo "$out" | grep -q 2.0.0 || ok="$ok status: $out;"
mtd_holds edufw-b $IMG/fw.bin || ok="$ok edufw-b does not hold fw.bin's bytes;"
check flash-mtd-persistent "edu0: signed 100 KB firmware to MTD partitions on phram (ivshmem file); daemon $PID survived in seccomp kill mode; edufw-b holds the image's bytes"

ok=
ctl root firmware flash nvme0 $IMG/fw.bin --signature $IMG/fw.bin.minisig || ok="flash: $out;"
ctl root firmware status nvme0
echo "$out" | grep -q 2.0.0 || ok="$ok status: $out;"
mtd_holds nvmefw-b $IMG/fw.bin || ok="$ok nvmefw-b does not hold fw.bin's bytes;"
ctl root firmware flash nvme0 $IMG/fw.bin --signature $IMG/fw-bad.minisig
[ $rc -ne 0 ] || ok="$ok a bad signature was accepted;"
check flash-mtd-ram "nvme0: signed firmware to MTD partitions on mtdram; bad signature refused"

ok=
ctl root firmware flash igb0 $IMG/fw-small.bin --signature $IMG/fw-small.bin.minisig
[ $rc -ne 0 ] && echo "$out" | grep -q 'fw_slots' || ok="flash on an entry without slots: $rc $out;"
check flash-fwupload-no-slots "test_firmware has no A/B slot attributes: the refusal says so"

# --- the end -----------------------------------------------------------------------------
if kill -0 "$PID" 2>/dev/null; then
  pass daemon-alive "the daemon ($PID, seccomp kill mode) ran every scenario without being killed"
else
  fail daemon-alive "the daemon ($PID) died (seccomp kill or crash)"
fi
