#!/usr/bin/env python3
"""Ask governance before a tool call, and act on the verdict. Standard library only.

Run inside the agent's cgroup: the proxy identifies the caller by its socket, like the
agent's own traffic, so the answer is the one the agent's requests would get.

    python3 decide.py run_shell '{"cmd": "id"}'
    python3 decide.py web_search '{"q": "ebpf"}' http://mcp.search.example/mcp
"""
import json
import sys
import time
import urllib.request

DECIDE = "http://127.0.0.1:15001/.governance/v1/decide"


def decide(action):
    """POST one action; returns the decision (verdict, allowed, rule, reason, ...)."""
    req = urllib.request.Request(
        DECIDE,
        data=json.dumps(action).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def main():
    tool = sys.argv[1] if len(sys.argv) > 1 else "web_search"
    arguments = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    action = {"tool": tool, "arguments": arguments}
    if len(sys.argv) > 3:
        action["server"] = sys.argv[3]  # without it, MCP rules for any server apply

    d = decide(action)
    # An escalation waits for a human: asking again returns the same approval id while it
    # is pending, and allowed=true once it is approved. A new id means the old request was
    # denied or expired.
    first = d.get("approval_id")
    while d["verdict"] == "escalate" and not d["allowed"] and d.get("approval_id") == first:
        print(f"waiting for approval {first}: {d['reason']}", file=sys.stderr)
        time.sleep(5)
        d = decide(action)

    if d["allowed"]:
        print(f"go ahead with {tool} (decision {d['decision_id']}, rule {d['rule']})")
        return 0
    if d["verdict"] == "throttle":
        print(f"throttled: retry in {d['retry_after_secs']} s ({d['reason']})")
        return 2
    if d["verdict"] == "sandbox":
        print(f"only against the sandbox {d['sandbox_upstream']} ({d['reason']})")
        return 3
    print(f"refused by {d['rule']}: {d['reason']} (decision {d['decision_id']})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
