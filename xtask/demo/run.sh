#!/bin/sh
# `cargo xtask demo`, inside the VM: the daemon enforces the shipped demo policies, a scripted
# agent acts from its cgroup, a human approves from a second terminal, and what you read is
# `governance events --follow`: the decisions as they happen.
set -u
AGENT_CGROUP=/sys/fs/cgroup/governance/demo-agent
EVENTS=/tmp/events.log
DAEMON_LOG=/tmp/governance.log

# What the agent's tools will touch, and the payments API it calls (on 10.0.0.10:80).
mkdir -p /governance/demo/secrets /tmp/sandbox
echo "sk-live-not-for-agents" > /governance/demo/secrets/api-key
echo "index" > /governance/demo/search-index
echo "date,amount" > /governance/demo/payments.csv
ip addr add 10.0.0.10/32 dev lo
redteam-helper http-upstream 10.0.0.10:80 payments-api &
UPSTREAM=$!

echo
echo "== terminal 1: governance run --policy /governance/policies (its own log: $DAEMON_LOG)"
governance run --quiet --detach-on-exit --policy /governance/policies \
    --proxy-host api.payments.example=10.0.0.10 >"$DAEMON_LOG" 2>&1 &
DAEMON=$!
tries=0
until grep -q "control API on" "$DAEMON_LOG"; do
    if ! kill -0 "$DAEMON" 2>/dev/null; then cat "$DAEMON_LOG"; echo "demo: the daemon exited"; exit 1; fi
    tries=$((tries + 1))
    if [ "$tries" -gt 600 ]; then echo "demo: the daemon did not start in 120 s"; exit 1; fi
    sleep 0.2
done
grep -E "enforcing|agent |proxy on" "$DAEMON_LOG"

echo
echo "== terminal 2: governance events --follow   (what an incident responder sees; the agent's"
echo "   shell also opens /dev/null and execs itself, allowed: those lines are left out here)"
governance events --follow | tee "$EVENTS" | grep -vE ' ALLOW +(file|exec) ' &
FOLLOW=$!
sleep 1

# Terminal 3, the human in the loop: approves what the agent escalates.
(
    approved=""
    for i in $(seq 1 240); do
        for id in $(governance approvals -o json | grep -o '"id": *"a-[a-z0-9]*"' | cut -d'"' -f4); do
            case " $approved " in *" $id "*) continue ;; esac
            sleep 2
            echo "[terminal 3] \$ governance approvals"
            governance approvals | sed 's/^/[terminal 3]   /'
            echo "[terminal 3] \$ governance approve $id --as alice"
            governance approve "$id" --as alice --for 1m | sed 's/^/[terminal 3]   /'
            approved="$approved $id"
        done
        sleep 0.5
    done
) &
HUMAN=$!

echo
echo "== terminal 4: a scripted agent runs in cgroup governance/demo-agent"
sh -c "echo \$\$ > $AGENT_CGROUP/cgroup.procs && exec sh /governance/demo/agent.sh" 2>&1 | sed 's/^/    /'

echo
echo "== control: outside the agent, the same /usr/bin/nc runs"
/usr/bin/nc -w 1 127.0.0.1 9 </dev/null
control=$?
echo "[control] /usr/bin/nc ran (exit status $control: nothing listens on 127.0.0.1:9)"

sleep 2 # let the last events reach the stream
kill "$HUMAN" 2>/dev/null
kill "$DAEMON"
wait "$DAEMON"
wait "$FOLLOW" # the stream ends with the daemon
kill "$UPSTREAM" 2>/dev/null

echo
echo "== the audit log: governance audit verify /var/lib/governance/audit"
governance audit verify /var/lib/governance/audit
verified=$?

count() { grep -cE "$1" "$EVENTS"; }
blocked=$(count ' BLOCK +exec .*demo-agent/no-nc')
connect=$(count ' BLOCK +connect ')
file=$(count ' BLOCK +file .*no-secrets')
throttled=$(count ' THROTTLE +file ')
sandboxed=$(count ' SANDBOX +exec ')
confined=$(count ' BLOCK .* sandboxed ')
escalated=$(count ' ESCALATE +file ')
granted=$(count ' GRANTED +file ')
refund_ok=$(count ' ALLOW +http .*refund-small')
refund_held=$(count ' ESCALATE +http .*refund-medium')
refund_approved=$(count 'APPROVAL +approval.approved .*POST')
refund_blocked=$(count ' BLOCK +http .*refund-large')
echo
echo "== summary (counted from the event stream above)"
echo "  exec blocked:        $blocked   (/usr/bin/nc, matched by its file)"
echo "  connect blocked:     $connect   (169.254.169.254, the cloud metadata service)"
echo "  file blocked:        $file   (the API key)"
echo "  throttled:           $throttled   (searches 4 and 5 of a burst of 5, 3 per minute)"
echo "  sandboxed:           $sandboxed   (the third-party tool), then $confined actions refused inside the sandbox"
echo "  escalated/granted:   $escalated / $granted   (payments.csv: refused, approved, retried)"
echo "  refunds:             \$50 allowed $refund_ok, \$500 held $refund_held and approved $refund_approved, \$5,000 blocked $refund_blocked"
echo "  control outside the agent: /usr/bin/nc executed (exit status $control)"
echo "  audit log verified:  $([ $verified -eq 0 ] && echo yes || echo NO)"
if [ "$blocked" -ge 1 ] && [ "$connect" -ge 1 ] && [ "$file" -ge 1 ] \
    && [ "$throttled" -ge 2 ] && [ "$sandboxed" -ge 1 ] && [ "$confined" -ge 1 ] \
    && [ "$escalated" -ge 1 ] && [ "$granted" -ge 1 ] && [ "$refund_ok" -ge 1 ] \
    && [ "$refund_held" -ge 1 ] && [ "$refund_approved" -ge 1 ] && [ "$refund_blocked" -ge 1 ] \
    && [ "$control" -ne 126 ] && [ "$verified" -eq 0 ]; then
    echo "demo: OK, the kernel and the proxy enforced the policy"
    exit 0
fi
echo "demo: FAILED, the decisions above are not what the policy asks for"
exit 1
