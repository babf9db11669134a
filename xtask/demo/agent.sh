#!/bin/sh
# A stand-in for an AI agent's tool runner: each step is a tool call a model asked for.
# It runs unmodified inside the agent cgroup; it knows nothing about governance.
# (Tools are called by path: busybox's shell would otherwise run its own built-in applets.)
say() { echo "[agent] $*"; }
# Pacing for a human watching the demo, not synchronisation: nothing waits on it.
pause() { sleep 0.7; }
METADATA=169.254.169.254
PAYMENTS=10.0.0.10

say "tool call: list_files /governance/policies"
/bin/ls /governance/policies
pause

say "tool call: http_get http://$METADATA/latest/meta-data/iam/ with /usr/bin/nc"
printf 'GET /latest/meta-data/iam/ HTTP/1.0\r\n\r\n' | /usr/bin/nc -w 2 "$METADATA" 80
say "  -> exit status $?"
pause

say "tool call: the same through /bin/busybox nc, a binary the exec rule does not name"
printf 'GET /latest/meta-data/iam/ HTTP/1.0\r\n\r\n' | /bin/busybox nc -w 2 "$METADATA" 80
say "  -> exit status $?"
pause

say "tool call: read_file /governance/demo/secrets/api-key"
/bin/cat /governance/demo/secrets/api-key
say "  -> exit status $?"
pause

say "tool call: search x5 (the policy meters searches: 3 per minute)"
for i in 1 2 3 4 5; do
    /bin/cat /governance/demo/search-index >/dev/null
    say "  search $i -> exit status $?"
done
pause

say "tool call: run the third-party tool /usr/bin/ash (sandboxed: no network, writes only to /tmp/sandbox)"
/usr/bin/ash -c '
    echo result > /tmp/sandbox/out && echo "[tool] wrote /tmp/sandbox/out"
    echo x > /governance/demo/escaped || echo "[tool] could not write outside /tmp/sandbox"
    /bin/busybox nc -w 1 127.0.0.1 9 </dev/null || echo "[tool] no network"
'
pause

say "tool call: read_file /governance/demo/payments.csv (escalated to a human)"
# The tool retries once a second until a human has approved, 30 attempts at most. Each refused
# attempt says so: the demo's summary checks that each one is an ESCALATE event.
read_ok=""
for i in $(seq 1 30); do
    if /bin/cat /governance/demo/payments.csv 2>/dev/null; then
        say "  -> approved, read on attempt $i"
        read_ok=yes
        break
    fi
    say "  attempt $i: refused for now, waiting for a human"
    sleep 1 # the retry interval
done
[ -n "$read_ok" ] || say "  -> gave up: no human approved the read within 30 attempts"
pause

# The payments API, as the agent's HTTP tool calls it. The kernel sends the connection to the
# HTTP policy proxy, which decides on the request and its JSON body.
refund() {
    say "tool call: issue_refund \$$1 (curl -X POST http://api.payments.example/v1/refunds)"
    /usr/bin/curl -sS --max-time 150 --resolve "api.payments.example:80:$PAYMENTS" \
        -H 'Content-Type: application/json' -d "{\"amount\": $1, \"order\": \"A-1001\"}" \
        -w '  [HTTP %{http_code}]\n' http://api.payments.example/v1/refunds
}
refund 50
pause
refund 500
pause
refund 5000
