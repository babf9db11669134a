#!/bin/sh
# `cargo xtask demo`, inside the VM: start the daemon with the shipped policies, let a scripted
# agent act from its cgroup, run a control outside it, and sum up what the kernel decided.
set -u
LOG=/tmp/governance.log
AGENT_CGROUP=/sys/fs/cgroup/governance/demo-agent

# What the agent's tools will touch.
mkdir -p /governance/demo/secrets /tmp/sandbox
echo "sk-live-not-for-agents" > /governance/demo/secrets/api-key
echo "index" > /governance/demo/search-index
echo "date,amount" > /governance/demo/payments.csv

echo
echo "== 1. governance run --policy /governance/policies"
# The daemon writes to the console and to $LOG (for the summary). $! is tee's pid.
governance run --detach-on-exit --policy /governance/policies 2>&1 | tee "$LOG" &
TEE=$!
tries=0
until grep -q "governance: enforcing" "$LOG"; do
    if ! kill -0 "$TEE" 2>/dev/null; then echo "demo: the daemon exited before enforcing"; exit 1; fi
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ]; then echo "demo: the daemon did not start in 120 s"; exit 1; fi
    sleep 0.2
done
DAEMON=$(pidof governance)

# The human in the loop: approve the escalation when it shows up.
(
    for i in $(seq 1 60); do
        token=$(grep -o 'approve=[^ ]*' "$LOG" | head -n 1 | cut -d= -f2)
        if [ -n "$token" ]; then
            sleep 2
            echo "[human] approving the escalated request"
            governance approve "$token" --for 1m
            exit 0
        fi
        sleep 0.5
    done
) &

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

count() { grep -cE "$1" "$LOG"; }
allowed=$(count ' ALLOW +exec ')
blocked=$(count ' BLOCK +exec ')
connect=$(count ' BLOCK +connect ')
file=$(count ' BLOCK +file .*no-secrets')
throttled=$(count ' THROTTLE +file ')
sandboxed=$(count ' SANDBOX +exec ')
confined=$(count ' BLOCK .* sandboxed')
escalated=$(count ' ESCALATE +file ')
granted=$(count ' GRANTED +file ')
echo
echo "== summary"
echo "  exec allowed:       $allowed"
echo "  exec blocked:       $blocked   (/usr/bin/nc, matched by its file)"
echo "  connect blocked:    $connect   (169.254.169.254, the cloud metadata service)"
echo "  file blocked:       $file   (the API key)"
echo "  throttled:          $throttled   (searches 4 and 5 of a burst of 5, 3 per minute)"
echo "  sandboxed:          $sandboxed   (the third-party tool), then $confined actions refused inside the sandbox"
echo "  escalated/granted:  $escalated / $granted   (payments.csv: held, approved, retried)"
echo "  control outside the agent: /usr/bin/nc executed (exit status $control)"
if [ "$allowed" -ge 1 ] && [ "$blocked" -ge 1 ] && [ "$connect" -ge 1 ] && [ "$file" -ge 1 ] \
    && [ "$throttled" -ge 2 ] && [ "$sandboxed" -ge 1 ] && [ "$confined" -ge 1 ] \
    && [ "$escalated" -ge 1 ] && [ "$granted" -ge 1 ] && [ "$control" -ne 126 ]; then
    echo "demo: OK, the kernel enforced the policy"
    exit 0
fi
echo "demo: FAILED, the decisions above are not what the policy asks for"
exit 1
