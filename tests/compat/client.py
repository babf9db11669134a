"""Real Python HTTP clients, run inside an agent cgroup by the compatibility suite.

    python client.py CLIENT request METHOD URL [JSON_BODY]
    python client.py CLIENT stream URL                 # an SSE response, read to its end
    python client.py MCP_CLIENT URL TOOL JSON_ARGUMENTS

CLIENT: requests, httpx (HTTP/1.1), httpx-h2c (HTTP/2 with prior knowledge), aiohttp.
MCP_CLIENT: the MCP SDK's client over streamable HTTP as it negotiates by default
(mcp-streamable), over streamable HTTP with the initialize handshake of the 2025 protocol
versions (mcp-streamable-2025: a session, its GET event stream and its DELETE), and over the
legacy SSE transport (mcp-sse).
Prints one JSON line: what the client saw (status, version, headers, body; or the SSE
events; or the MCP result or error). The suite's Rust test holds the expectations.

COMPAT_RESOLVE="name=ip,..." stands in for DNS, as curl's --resolve does: the kernel sends the
connection to the policy proxy whatever address it names, and the proxy checks that the Host
names that address.
"""

import asyncio
import json
import os
import socket
import sys

_names = dict(
    pair.split("=", 1) for pair in os.environ.get("COMPAT_RESOLVE", "").split(",") if pair
)
_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    return _getaddrinfo(_names.get(name, host), *args, **kwargs)


socket.getaddrinfo = _resolve

TIMEOUT = 60


def events_of(lines):
    """The data of each SSE event in `lines` (text lines without their endings)."""
    events, data = [], []
    for line in lines:
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    return events


def seen(status, version, headers, body):
    return {
        "status": status,
        "version": version,
        "headers": {k.lower(): v for k, v in headers.items()},
        "body": body,
    }


def with_requests(op, args):
    import requests

    if op == "request":
        method, url, body = args[0], args[1], args[2] if len(args) > 2 else None
        r = requests.request(
            method,
            url,
            data=body,
            headers={"content-type": "application/json"} if body else {},
            timeout=TIMEOUT,
        )
        return seen(r.status_code, f"HTTP/{r.raw.version / 10:.1f}", r.headers, r.text)
    r = requests.get(args[0], stream=True, timeout=TIMEOUT)
    lines, error = [], None
    try:
        for line in r.iter_lines(decode_unicode=True):
            lines.append(line)
    except Exception as e:  # the stream was cut
        error = repr(e)
    out = seen(r.status_code, f"HTTP/{r.raw.version / 10:.1f}", r.headers, None)
    out.update(events=events_of(lines + [""]), error=error)
    return out


def with_httpx(op, args, h2c):
    import httpx

    client = httpx.Client(http1=not h2c, http2=h2c, timeout=TIMEOUT)
    with client:
        if op == "request":
            method, url, body = args[0], args[1], args[2] if len(args) > 2 else None
            r = client.request(
                method,
                url,
                content=body,
                headers={"content-type": "application/json"} if body else {},
            )
            return seen(r.status_code, r.http_version, r.headers, r.text)
        lines, error = [], None
        with client.stream("GET", args[0]) as r:
            try:
                for line in r.iter_lines():
                    lines.append(line)
            except Exception as e:
                error = repr(e)
            out = seen(r.status_code, r.http_version, r.headers, None)
        out.update(events=events_of(lines + [""]), error=error)
        return out


async def with_aiohttp(op, args):
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if op == "request":
            method, url, body = args[0], args[1], args[2] if len(args) > 2 else None
            headers = {"content-type": "application/json"} if body else {}
            async with session.request(method, url, data=body, headers=headers) as r:
                text = await r.text()
                v = f"HTTP/{r.version.major}.{r.version.minor}"
                return seen(r.status, v, r.headers, text)
        async with session.get(args[0]) as r:
            lines, error = [], None
            try:
                async for raw in r.content:
                    lines.append(raw.decode().rstrip("\r\n"))
            except Exception as e:
                error = repr(e)
            out = seen(r.status, f"HTTP/{r.version.major}.{r.version.minor}", r.headers, None)
            out.update(events=events_of(lines + [""]), error=error)
            return out


async def with_mcp(transport, url, tool, arguments):
    from mcp import Client
    from mcp.client.sse import sse_client
    from mcp.shared.exceptions import MCPError

    progress = []

    async def on_progress(value, total, message):
        progress.append(value)

    server = sse_client(url) if transport == "mcp-sse" else url
    mode = "legacy" if transport == "mcp-streamable-2025" else "auto"
    async with Client(server, mode=mode, read_timeout_seconds=TIMEOUT) as client:
        seen = {"protocol": client.protocol_version}
        try:
            r = await client.call_tool(tool, arguments, progress_callback=on_progress)
        except MCPError as e:
            seen["error"] = {"code": e.code, "message": e.message, "data": e.data}
            return seen
        text = "".join(c.text for c in r.content if getattr(c, "type", "") == "text")
        seen.update(result=text, is_error=bool(r.is_error), progress=progress)
        return seen


def main():
    client, rest = sys.argv[1], sys.argv[2:]
    if client.startswith("mcp-"):
        url, tool, arguments = rest[0], rest[1], json.loads(rest[2])
        out = asyncio.run(with_mcp(client, url, tool, arguments))
    elif client == "requests":
        out = with_requests(rest[0], rest[1:])
    elif client in ("httpx", "httpx-h2c"):
        out = with_httpx(rest[0], rest[1:], client == "httpx-h2c")
    elif client == "aiohttp":
        out = asyncio.run(with_aiohttp(rest[0], rest[1:]))
    else:
        sys.exit(f"unknown client {client}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
