#!/bin/sh
# `cargo xtask demo`, inside the VM: start the daemon with the shipped policies, let a scripted
# agent act from its cgroup, run a control outside it, and sum up what the kernel decided.
set -u
LOG=/tmp/governance.log
AGENT_CGROUP=/sys/fs/cgroup/governance/demo-agent

echo
echo "== 1. governance run --policy /governance/policies"
# The daemon writes to the console and to $LOG (for the summary). $! is tee's pid.
governance run --policy /governance/policies 2>&1 | tee "$LOG" &
TEE=$!
tries=0
until grep -q "governance: enforcing" "$LOG"; do
    if ! kill -0 "$TEE" 2>/dev/null; then echo "demo: the daemon exited before enforcing"; exit 1; fi
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ]; then echo "demo: the daemon did not start in 120 s"; exit 1; fi
    sleep 0.2
done
DAEMON=$(pidof governance)

echo
echo "== 2. a scripted agent runs in cgroup governance/demo-agent"
sh -c "echo \$\$ > $AGENT_CGROUP/cgroup.procs && exec sh /governance/demo/agent.sh"

echo
echo "== 3. control: outside the agent, the same /usr/bin/nc runs"
/usr/bin/nc -w 1 127.0.0.1 9 </dev/null
control=$?
echo "[control] /usr/bin/nc ran (exit status $control: nothing listens on 127.0.0.1:9)"

sleep 1 # let the last events reach the log
kill "$DAEMON"
wait "$TEE"

allowed=$(grep -c ' ALLOW exec ' "$LOG")
blocked=$(grep -c ' BLOCK exec ' "$LOG")
connect=$(grep -c ' BLOCK connect ' "$LOG")
echo
echo "== summary"
echo "  exec allowed:     $allowed"
echo "  exec blocked:     $blocked   (/usr/bin/nc, matched by its file)"
echo "  connect blocked:  $connect   (169.254.169.254, the cloud metadata service)"
echo "  control outside the agent: /usr/bin/nc executed (exit status $control)"
if [ "$allowed" -ge 1 ] && [ "$blocked" -ge 1 ] && [ "$connect" -ge 1 ] && [ "$control" -ne 126 ]; then
    echo "demo: OK, the kernel enforced the policy"
    exit 0
fi
echo "demo: FAILED, the decisions above are not what the policy asks for"
exit 1
