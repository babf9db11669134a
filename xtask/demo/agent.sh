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
