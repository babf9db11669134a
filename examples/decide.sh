#!/bin/sh
# Ask governance whether a tool call may run, with curl. Run inside the agent's cgroup: the
# proxy identifies the caller by its socket.
#
#   sh decide.sh run_shell '{"cmd": "id"}'
# Prints the decision JSON; exits 0 when allowed, 1 otherwise.
tool=${1:-web_search}
args=${2:-'{}'}
answer=$(curl -sS --max-time 10 -X POST http://127.0.0.1:15001/.governance/v1/decide \
  -H 'content-type: application/json' \
  -d "{\"tool\": \"$tool\", \"arguments\": $args}") || exit 1
echo "$answer"
# The answer: {"decision_id", "verdict", "allowed", "rule", "reason", and retry_after_secs,
# approval_id or sandbox_upstream when they apply}.
case $answer in
  *'"allowed":true'*) exit 0 ;;
  *) exit 1 ;;
esac
