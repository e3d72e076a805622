#!/bin/sh
# PCI hotplug on the real kernel: a second edu is added to the free root port rp3 (bus 04),
# removed while a job runs on it, and added again. The guest cannot reach QEMU's monitor, so
# it asks the host on the console with a line
#   RIG-QMP <command> <arguments-json>
# (rig/qmp-relay sends it to QEMU's QMP socket) and then waits for the effect. Results as in
# scenarios.sh: one RIG-RESULT line per scenario.
IMG=/rig/images
BDF=0000:04:00.0
FW=/sys/class/firmware/rig-hotplug

pass() { n=$1; shift; echo "RIG-RESULT $n pass $*"; }
fail() { n=$1; shift; echo "RIG-RESULT $n fail $(echo "$*" | tr '\n' ' ' | cut -c1-600)"; }
ctl() {
  u=$1; shift
  out=$(timeout 60 su -s /bin/sh "$u" -c "/usr/bin/accelctl $*" 2>&1)
  rc=$?
}
check() { if [ -z "$ok" ]; then pass "$1" "$2"; else fail "$1" "$ok"; fi; }
served() { ctl root devices; echo "$out" | grep -qw edu1; }
# wait_for present|absent: up to 60 s for edu1 to be served or gone.
wait_for() {
  i=0
  while [ $i -lt 240 ]; do
    if served; then [ "$1" = present ] && return 0; else [ "$1" = absent ] && return 0; fi
    sleep 0.25
    i=$((i + 1))
  done
  return 1
}
now() { cut -d' ' -f1 /proc/uptime; }
# The memory-space bit of the function's command register (config offset 4).
decoding() { od -An -tx1 -j4 -N1 "/sys/bus/pci/devices/$BDF/config" | tr -d ' '; }

echo -n rig-hotplug >/sys/devices/virtual/misc/test_firmware/upload_register

# --- added: served at once, memory decoding turned on by the daemon ----------------------
ok=
t0=$(now)
echo 'RIG-QMP device_add {"driver": "edu", "id": "hp0", "bus": "rp3"}'
if wait_for present; then
  t1=$(now)
  cmd=$(decoding)
  [ $((0x${cmd:-0} & 2)) -eq 2 ] || ok="memory decoding is off (command low byte ${cmd:-?});"
  ctl root slices edu1
  echo "$out" | grep -qw regs && echo "$out" | grep -qw region0 || ok="$ok slices: $out;"
  ctl root assign edu1/regs ag-tenant1 || ok="$ok assign regs: $out;"
  ctl root assign edu1/region0 ag-tenant1 || ok="$ok assign region0: $out;"
  ctl ag-tenant1 read edu1/regs 0x0
  echo "$out" | grep -qi 0x010000ed || ok="$ok ID read $rc: $out;"
  ctl ag-tenant1 write edu1/regs 0x4 0x0f0f0f0f || ok="$ok write: $out;"
  ctl ag-tenant1 read edu1/regs 0x4
  echo "$out" | grep -qi 0xf0f0f0f0 || ok="$ok liveness read-back: $out;"
  grep -q "memory decoding of $BDF turned on" /tmp/accelgated.log ||
    ok="$ok the log does not say decoding was turned on;"
  check hotplug-add "edu1 served $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s after device_add; decoding on, ID read, 0x4 inverted"
else
  fail hotplug-add "edu1 never appeared: $out $(dmesg | tail -n 5)"
fi

# --- removed while a job runs: the job fails, reads are refused --------------------------
ok=
# inject:preparing:user-abort makes test_firmware wait in "preparing" until cancelled.
su -s /bin/sh ag-tenant1 -c "/usr/bin/accelctl program edu1/region0 $IMG/inject-user-abort.bin" \
  >/tmp/hotplug-program.out 2>&1 &
prog=$!
i=0
until [ "$(cat $FW/status 2>/dev/null)" = preparing ] || [ $i -ge 120 ]; do
  sleep 0.25
  i=$((i + 1))
done
[ "$(cat $FW/status 2>/dev/null)" = preparing ] || ok="the upload never started: $(cat /tmp/hotplug-program.out);"
echo 'RIG-QMP device_del {"id": "hp0"}'
if wait_for absent; then
  i=0
  while kill -0 $prog 2>/dev/null && [ $i -lt 120 ]; do sleep 0.25; i=$((i + 1)); done
  if kill -0 $prog 2>/dev/null; then
    ok="$ok the program job did not end;"
    kill $prog
  fi
  wait $prog
  prc=$?
  [ $prc -ne 0 ] && grep -q removed /tmp/hotplug-program.out ||
    ok="$ok program ended $prc: $(cat /tmp/hotplug-program.out);"
  ctl ag-tenant1 read edu1/regs 0x0
  [ $rc -ne 0 ] && echo "$out" | grep -q "NotFound" || ok="$ok read after removal $rc: $out;"
  [ -e "/sys/bus/pci/devices/$BDF" ] && ok="$ok $BDF is still on the bus;"
  # The daemon cancelled the abandoned upload: the driver is idle again.
  i=0
  until [ "$(cat $FW/status)" = idle ] || [ $i -ge 40 ]; do sleep 0.25; i=$((i + 1)); done
  [ "$(cat $FW/status)" = idle ] || ok="$ok upload still $(cat $FW/status);"
  kill -0 "$(cat /run/accelgated.pid)" 2>/dev/null || ok="$ok the daemon died;"
  check hotplug-remove "edu1 withdrawn on device_del; its job failed naming the removal; reads refused; upload cancelled"
else
  fail hotplug-remove "edu1 still served after device_del: $(dmesg | tail -n 5)"
fi

# --- back at the same address: served again with its assignments -------------------------
ok=
echo 'RIG-QMP device_add {"driver": "edu", "id": "hp0", "bus": "rp3"}'
if wait_for present; then
  ctl ag-tenant1 read edu1/regs 0x0
  echo "$out" | grep -qi 0x010000ed || ok="ID read by the kept tenant $rc: $out;"
  ctl root --json slices edu1
  echo "$out" | tr -d ' \n' | grep -q '"tenant":"user:ag-tenant1"' || ok="$ok assignments: $out;"
  check hotplug-return "edu1 served again, its tenant kept and reading the ID"
else
  fail hotplug-return "edu1 never came back: $(dmesg | tail -n 5)"
fi
