#!/bin/sh
# A stand-in for an AI agent's tool runner: each step is a tool call a model asked for.
# It runs unmodified inside the agent cgroup; it knows nothing about governance.
# (Tools are called by path: busybox's shell would otherwise run its own built-in applets.)
say() { echo "[agent] $*"; }
METADATA=169.254.169.254

say "tool call: list_files /governance/policies"
/bin/ls /governance/policies

sleep 0.5
say "tool call: read_file /governance/policies/demo-agent.yaml (the agent's name)"
/bin/grep -m 1 'name:' /governance/policies/demo-agent.yaml
sleep 0.5

say "tool call: http_get http://$METADATA/latest/meta-data/iam/ with /usr/bin/nc"
printf 'GET /latest/meta-data/iam/ HTTP/1.0\r\n\r\n' | /usr/bin/nc -w 2 "$METADATA" 80
say "  -> exit status $?"
sleep 0.5

say "tool call: the same through /bin/busybox nc, a binary the exec rule does not name"
printf 'GET /latest/meta-data/iam/ HTTP/1.0\r\n\r\n' | /bin/busybox nc -w 2 "$METADATA" 80
say "  -> exit status $?"
sleep 0.5

say "tool call: read_file /governance/demo/secrets/api-key"
/bin/cat /governance/demo/secrets/api-key
say "  -> exit status $?"
sleep 0.5

say "tool call: search x5 (the policy meters searches: 3 per minute)"
for i in 1 2 3 4 5; do
    /bin/cat /governance/demo/search-index >/dev/null
    say "  search $i -> exit status $?"
done
sleep 0.5

say "tool call: run the third-party tool /usr/bin/ash (sandboxed: no network, writes only to /tmp/sandbox)"
/usr/bin/ash -c '
    echo result > /tmp/sandbox/out && echo "[tool] wrote /tmp/sandbox/out"
    echo x > /governance/demo/escaped || echo "[tool] could not write outside /tmp/sandbox"
    /usr/bin/nc -w 1 127.0.0.1 9 </dev/null || echo "[tool] no network"
'
sleep 0.5

say "tool call: read_file /governance/demo/payments.csv (escalated to a human)"
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    if /bin/cat /governance/demo/payments.csv 2>/dev/null; then
        say "  -> approved, read on attempt $i"
        break
    fi
    say "  attempt $i: waiting for approval"
    sleep 1
done
