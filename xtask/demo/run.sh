#!/bin/sh
# `cargo xtask demo`, inside the VM: the daemon enforces the shipped demo policies, a scripted
# agent acts from its cgroup, a human approves from a second terminal, and what you read is
# `governance events --follow`: the decisions as they happen.
set -u
AGENT_CGROUP=/sys/fs/cgroup/governance/demo-agent
EVENTS=/tmp/events.log
FOLLOW_LOG=/tmp/events.stderr
AGENT_LOG=/tmp/agent.log
DAEMON_LOG=/tmp/governance.log

# wait_for FILE PATTERN SECONDS WHAT [PID]: until a line of FILE matches PATTERN (grep -E). Gives
# up, saying that WHAT never happened, after SECONDS or as soon as process PID has exited.
# (It polls: busybox has no way to wait for a line to appear in a file.)
wait_for() {
    deadline=$(($(date +%s) + $3))
    until grep -qE "$2" "$1" 2>/dev/null; do
        if [ -n "${5:-}" ] && ! kill -0 "$5" 2>/dev/null; then
            echo "demo: $4 never happened: process $5 exited"
            return 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "demo: $4 never happened (waited $3 s)"
            return 1
        fi
        sleep 0.1
    done
}

# What the agent's tools will touch, and the payments API it calls (on 10.0.0.10:80).
mkdir -p /governance/demo/secrets /tmp/sandbox
echo "sk-live-not-for-agents" > /governance/demo/secrets/api-key
echo "index" > /governance/demo/search-index
echo "date,amount" > /governance/demo/payments.csv
ip addr add 10.0.0.10/32 dev lo
redteam-helper http-upstream 10.0.0.10:80 payments-api &
UPSTREAM=$!
# Listening: /proc/net/tcp has 10.0.0.10:80 (hex, as the kernel stores it) in state 0A.
wait_for /proc/net/tcp ' 0A00000A:0050 00000000:0000 0A ' 30 \
    "the payments API listening on 10.0.0.10:80" "$UPSTREAM" || exit 1

echo
echo "== terminal 1: governance run --policy /governance/policies (its own log: $DAEMON_LOG)"
governance run --quiet --detach-on-exit --policy /governance/policies \
    --proxy-host api.payments.example=10.0.0.10 >"$DAEMON_LOG" 2>&1 &
DAEMON=$!
if ! wait_for "$DAEMON_LOG" "control API on" 120 "the daemon's control API coming up" "$DAEMON"; then
    cat "$DAEMON_LOG"
    exit 1
fi
grep -E "enforcing|agent |proxy on" "$DAEMON_LOG"

echo
echo "== terminal 2: governance events --follow   (what an incident responder sees; the agent's"
echo "   shell also opens /dev/null and execs itself, allowed: those lines are left out here)"
governance events --follow 2>"$FOLLOW_LOG" | tee "$EVENTS" | grep -vE ' ALLOW +(file|exec) ' &
FOLLOW=$!
# The agent starts once the stream is subscribed (its first line, on stderr), so that the
# stream has every decision.
wait_for "$FOLLOW_LOG" "subscribed" 30 "the event stream's subscription" || {
    cat "$FOLLOW_LOG"
    exit 1
}
cat "$FOLLOW_LOG"

# Terminal 3, the human in the loop: approves what the agent escalates. It looks for pending
# approvals every half second, for two minutes at most (it is stopped when the agent is done).
(
    approved=""
    for i in $(seq 1 240); do
        for id in $(governance approvals -o json | grep -o '"id": *"a-[a-z0-9]*"' | cut -d'"' -f4); do
            case " $approved " in *" $id "*) continue ;; esac
            # Pacing, not synchronisation: a human takes a moment to read the request, and
            # the reader sees the agent wait.
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
# (tee and sed run outside the agent: only the agent's shell moves into its cgroup.)
sh -c "echo \$\$ > $AGENT_CGROUP/cgroup.procs && exec sh /governance/demo/agent.sh" 2>&1 \
    | tee "$AGENT_LOG" | sed 's/^/    /'

echo
echo "== control: outside the agent, the same /usr/bin/nc runs"
/usr/bin/nc -w 1 127.0.0.1 9 </dev/null
control=$?
echo "[control] /usr/bin/nc ran (exit status $control: nothing listens on 127.0.0.1:9)"

# The agent's last action was the $5,000 refund: once its decision is in the stream, so is
# every decision counted below (they all came before it). The daemon drains the kernel's ring
# buffer once more as it stops, and the stream ends after what it published.
wait_for "$EVENTS" ' BLOCK +http .*refund-large' 30 "the \$5,000 refund's decision reaching the stream"

echo
echo "== terminal 2: what the agent may do: governance agents --capabilities governance/demo-agent"
governance agents --capabilities governance/demo-agent
echo
echo "== terminal 2: a drill, each block rule tried from a throwaway canary agent: governance drill"
governance drill
drilled=$?
kill "$HUMAN" 2>/dev/null
kill "$DAEMON"
wait "$DAEMON"
wait "$FOLLOW" # the stream ends with the daemon
tail -n +2 "$FOLLOW_LOG" # what `governance events` said after subscribing (the stream's end)
kill "$UPSTREAM" 2>/dev/null

echo
echo "== the audit log: governance audit verify /var/lib/governance/audit"
governance audit verify /var/lib/governance/audit
verified=$?

# Every count is exact: it is what the agent did, one event per attempt.
# (The drill's canary decisions are its own, not the agent's: left out.)
count() { grep -E "$1" "$EVENTS" | grep -vc 'governance-drill'; }
blocked=$(count ' BLOCK +exec .*path="/usr/bin/nc".*rule=demo-agent/no-nc')
metadata=$(count ' BLOCK +connect .*dest="169\.254\.169\.254:80" .*rule=demo-agent/no-cloud-metadata')
secret=$(count ' BLOCK +file .*path="/governance/demo/secrets/api-key".*rule=demo-agent/no-secrets')
throttled=$(count ' THROTTLE +file .*path="/governance/demo/search-index".*rule=demo-agent/search-budget')
sandboxed=$(count ' SANDBOX +exec .*path="/usr/bin/ash".*rule=demo-agent/untrusted-tool')
# The sandboxed tool's own refusals (marked `sandboxed`): its write outside /tmp/sandbox and
# its connect, refused by the profile (no network), not by the cloud-metadata rule.
jail_write=$(count ' BLOCK +file .*path="/governance/demo/escaped".* sandboxed')
jail_connect=$(count ' BLOCK +connect .*dest="127\.0\.0\.1:9" .* sandboxed')
# payments.csv: one approval request; every read the agent tried while it was pending was
# refused with an ESCALATE event (how many depends on how fast the human is: the agent says).
waits=$(grep -c 'refused for now' "$AGENT_LOG")
escalated=$(count ' ESCALATE +file .*path="/governance/demo/payments\.csv".*rule=demo-agent/payments')
requests=$(grep -E ' ESCALATE +file .*payments\.csv' "$EVENTS" | grep -o 'approval=a-[a-z0-9]*' | sort -u | grep -c .)
file_approved=$(count 'APPROVAL +approval\.approved .*path="/governance/demo/payments\.csv"')
granted=$(count ' GRANTED +file .*path="/governance/demo/payments\.csv".*rule=demo-agent/payments')
refund_ok=$(count ' ALLOW +http .*rule=demo-payments/refund-small')
refund_held=$(count ' ESCALATE +http .*rule=demo-payments/refund-medium')
refund_approved=$(count 'APPROVAL +approval\.approved .*POST .*/v1/refunds')
refund_blocked=$(count ' BLOCK +http .*rule=demo-payments/refund-large')
echo
echo "== summary (counted from the event stream above; each count is exact)"
echo "  exec blocked:        $blocked   (/usr/bin/nc, matched by its file)"
echo "  connect blocked:     $metadata   (169.254.169.254:80, the cloud metadata service, through /bin/busybox nc)"
echo "  file blocked:        $secret   (the API key)"
echo "  throttled:           $throttled   (searches 4 and 5 of a burst of 5, 3 per minute)"
echo "  sandboxed:           $sandboxed   (the third-party tool /usr/bin/ash)"
echo "  refused in sandbox:  $jail_write write (/governance/demo/escaped), $jail_connect connect (127.0.0.1:9: no network)"
echo "  escalated:           $escalated   (payments.csv: $requests approval request; the agent was refused $waits times while it waited)"
echo "  approved/granted:    $file_approved / $granted   (payments.csv: approved by alice, then read)"
echo "  refunds:             \$50 allowed $refund_ok, \$500 held $refund_held and approved $refund_approved, \$5,000 blocked $refund_blocked"
echo "  control outside the agent: /usr/bin/nc executed (exit status $control)"
echo "  audit log verified:  $([ $verified -eq 0 ] && echo yes || echo NO)"
echo "  drill:               $([ $drilled -eq 0 ] && echo passed || echo FAILED)"
wrong=""
# expect NAME GOT WANT
expect() {
    [ "$2" -eq "$3" ] || wrong="$wrong
  $1: $2, expected $3"
}
expect "exec blocked" "$blocked" 1
expect "connect blocked (cloud metadata)" "$metadata" 1
expect "file blocked" "$secret" 1
expect "throttled" "$throttled" 2
expect "sandboxed" "$sandboxed" 1
expect "refused in sandbox, write" "$jail_write" 1
expect "refused in sandbox, connect" "$jail_connect" 1
[ "$waits" -ge 1 ] || wrong="$wrong
  the agent was never refused payments.csv"
expect "escalated (one per refused read)" "$escalated" "$waits"
expect "approval requests for payments.csv" "$requests" 1
expect "payments.csv approved" "$file_approved" 1
expect "payments.csv granted" "$granted" 1
expect "\$50 refund allowed" "$refund_ok" 1
expect "\$500 refund held" "$refund_held" 1
expect "\$500 refund approved" "$refund_approved" 1
expect "\$5,000 refund blocked" "$refund_blocked" 1
[ "$control" -ne 126 ] || wrong="$wrong
  control: /usr/bin/nc outside the agent could not run"
[ "$verified" -eq 0 ] || wrong="$wrong
  the audit log did not verify"
[ "$drilled" -eq 0 ] || wrong="$wrong
  the drill did not pass"
if [ -z "$wrong" ]; then
    echo "demo: OK, the kernel and the proxy enforced the policy"
    exit 0
fi
echo "demo: FAILED, the decisions above are not what the policy asks for:$wrong"
exit 1
