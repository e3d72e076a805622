#!/bin/sh
# Guest side of the revocation experiment (rig/experiments/run boots it instead of the
# scenarios): does binding a driver that claims a VF's BAR revoke existing user mappings of
# that VF's resource0, and does a fresh mapping work after the driver is unbound again?
# Every line it prints starts with EXP.
SYS=/sys/bus/pci
IGB=0000:02:00.0
REG=0x800
POKE=/rig/barpoke
log() { echo "EXP $*"; }
run() { log "+ $*"; sh -c "$*" 2>&1 | sed 's/^/EXP   | /'; }
vf_bdf() { basename "$(readlink "$SYS/devices/$IGB/virtfn$1")"; }
drv_of() { d=$(readlink "$SYS/devices/$1/driver" 2>/dev/null); echo "${d##*/}"; }
holder_state() { # pid name
  if [ "$reaped" = "$1" ]; then
    log "$2: holder $1 already gone"
  elif kill -0 "$1" 2>/dev/null; then
    log "$2: holder $1 ALIVE"
  else
    wait "$1"; hrc=$?; reaped=$1
    log "$2: holder $1 EXITED status $hrc$([ $hrc -eq 135 ] && echo ' (SIGBUS)')"
  fi
  tail -n 2 /tmp/hold.out | sed 's/^/EXP   | /'
}
iomem_of() { # bdf: the BAR's /proc/iomem lines (a claimed region shows as a nested entry)
  start=$(sed -n 1p "$SYS/devices/$1/resource" | cut -d' ' -f1 | sed 's/^0x0*//')
  grep -i -A1 "$start" /proc/iomem | sed 's/^/EXP   iomem| /'
}
# One round: holder maps vf's resource0, DRIVER is bound through driver_override, the holder is
# observed, the driver is unbound, a fresh mapping is tried.
round() { # driver vf-index value
  drv=$1 vf=$(vf_bdf $2) val=$3 res=$SYS/devices/$(vf_bdf $2)/resource0
  log "=== round: $drv on $vf ==="
  run "echo 1 > $SYS/devices/$vf/enable"
  $POKE "$res" $REG hold "$val" >/tmp/hold.out 2>&1 &
  hpid=$!
  # A bystander: a mapping of the other VF, which the bind must leave alone.
  other=$(vf_bdf 0)
  run "echo 1 > $SYS/devices/$other/enable"
  $POKE "$SYS/devices/$other/resource0" $REG hold 0x0b0b0b0b >/tmp/bystander.out 2>&1 &
  bpid=$!
  sleep 1
  holder_state $hpid "before bind"
  run "$POKE $res $REG read"
  iomem_of "$vf"
  t0=$(cut -d' ' -f1 /proc/uptime)
  run "echo $drv > $SYS/devices/$vf/driver_override"
  run "echo $vf > $SYS/drivers_probe"
  log "driver now: '$(drv_of "$vf")' (bind took $t0 -> $(cut -d' ' -f1 /proc/uptime) s)"
  iomem_of "$vf"
  sleep 1
  holder_state $hpid "1 s after binding $drv"
  if kill -0 $bpid 2>/dev/null; then log "bystander on $other ALIVE"; else
    wait $bpid; log "bystander on $other EXITED status $?"; fi
  kill $bpid 2>/dev/null; wait $bpid 2>/dev/null
  run "$POKE $res $REG read"
  run "echo $vf > $SYS/drivers/$drv/unbind"
  run "echo > $SYS/devices/$vf/driver_override"
  log "driver now: '$(drv_of "$vf")', driver_override '$(cat $SYS/devices/$vf/driver_override)', enable $(cat $SYS/devices/$vf/enable)"
  sleep 0.5
  holder_state $hpid "after unbinding $drv"
  kill $hpid 2>/dev/null; wait $hpid 2>/dev/null
  run "$POKE $res $REG read"
  run "echo 1 > $SYS/devices/$vf/enable"
  run "$POKE $res $REG write 0x0badc0de"
  run "$POKE $res $REG read"
  run "$POKE $res $REG write 0"
  run "$POKE $res $REG read"
}

log "kernel $(uname -r)"
# Part A/B: without the daemon (its own windows of the VFs would be revoked too; part D).
kill "$(cat /run/accelgated.pid)"; sleep 0.5
run "echo 0 > $SYS/devices/$IGB/sriov_drivers_autoprobe"
run "echo 2 > $SYS/devices/$IGB/sriov_numvfs"
log "VFs: $(vf_bdf 0) $(vf_bdf 1); drivers '$(drv_of "$(vf_bdf 0)")' '$(drv_of "$(vf_bdf 1)")'"
round igbvf 1 0x12345600
round igbvf 1 0x12345601      # again: the round trip is repeatable
insmod /lib/modules/$(uname -r)/kernel/drivers/pci/pci-stub.ko 2>&1 | sed 's/^/EXP   | /'
[ -d $SYS/drivers/pci-stub ] && round pci-stub 1 0x12345602 || log "pci-stub: not loaded"
round pci-pf-stub 1 0x12345603
log "vfio-pci: CONFIG_VFIO_NOIOMMU is not set and the rig has no IOMMU: vfio-pci cannot bind (not tried)"
run "echo 0 > $SYS/devices/$IGB/sriov_numvfs"

# Part D: the daemon's path. A tenant holds a mapping handed out by Map; igbvf is bound and
# unbound; what happens to the tenant, and to the daemon whose own window of the VF was
# mapped before the bind?
log "=== part D: through the daemon ==="
accelgated --policy /rig/policy.toml --no-polkit --seccomp-violation kill >/tmp/accelgated2.log 2>&1 &
dpid=$!
i=0; until accelctl devices >/dev/null 2>&1 || [ $i -gt 300 ]; do sleep 0.1; i=$((i + 1)); done
ctl() { who=$1; shift; log "+ ($who) accelctl $*"; su -s /bin/sh "$who" -c "accelctl $*" 2>&1 | sed 's/^/EXP   | /'; }
ctl ag-operator vfs igb0 2
vf=$(vf_bdf 1)
run "echo 1 > $SYS/devices/$vf/enable"
ctl root assign igb0/vf1 ag-tenant1
su -s /bin/sh ag-tenant1 -c "accelctl map-test igb0/vf1 --write 0x12345604 --offset $REG --hold" >/tmp/hold.out 2>&1 &
hpid=$!
sleep 1.5
holder_state $hpid "D before bind"
ctl ag-tenant1 read igb0/vf1 $REG
run "echo igbvf > $SYS/devices/$vf/driver_override"
run "echo $vf > $SYS/drivers_probe"
log "driver now: '$(drv_of "$vf")'"
sleep 1
holder_state $hpid "D 1 s after binding igbvf"
log "daemon $dpid $(kill -0 $dpid 2>/dev/null && echo alive || echo GONE)"
run "echo $vf > $SYS/drivers/igbvf/unbind"
run "echo > $SYS/devices/$vf/driver_override"
run "echo 1 > $SYS/devices/$vf/enable"
kill $hpid 2>/dev/null; wait $hpid 2>/dev/null
ctl ag-tenant1 read igb0/vf1 $REG
sleep 0.3
if kill -0 $dpid 2>/dev/null; then log "daemon $dpid alive after reading through its old window"; else
  wait $dpid; log "daemon $dpid GONE after reading through its old window: status $?"; tail -n 5 /tmp/accelgated2.log | sed 's/^/EXP   log| /'; fi
if ! kill -0 $dpid 2>/dev/null; then
  log "restarting the daemon (its windows are mapped afresh)"
  accelgated --policy /rig/policy.toml --no-polkit --seccomp-violation kill >/tmp/accelgated3.log 2>&1 &
  dpid=$!
  i=0; until accelctl devices >/dev/null 2>&1 || [ $i -gt 300 ]; do sleep 0.1; i=$((i + 1)); done
fi
ctl ag-tenant1 read igb0/vf1 $REG
ctl ag-tenant1 map-test igb0/vf1 --write 0x0badc0de --offset $REG
ctl ag-tenant1 read igb0/vf1 $REG
log "daemon $dpid $(kill -0 $dpid 2>/dev/null && echo alive || echo GONE)"
run "$POKE $SYS/devices/$vf/resource0 $REG read"
log "daemon log (vf lines):"
grep -i 'vf1\|igbvf\|revok' /tmp/accelgated2.log | tail -n 20 | sed 's/^/EXP   log| /'
dmesg | grep -i 'igbvf\|pci-stub\|revoke\|02:10' | tail -n 30 | sed 's/^/EXP   dmesg| /'
log "done"
