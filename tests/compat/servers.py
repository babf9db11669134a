"""Upstreams of the HTTP compatibility suite, on loopback, outside every agent.

    python servers.py fastapi HOST PORT [NAME]  # FastAPI on uvicorn (NAME: its `server`)
    python servers.py mcp HOST PORT NAME  # the MCP SDK's server, both transports:
                                          #   streamable HTTP at /mcp, legacy SSE at /sse
    python servers.py tornado HOST PORT   # Tornado's own server
    python servers.py aiohttp HOST PORT   # aiohttp's own server

The refunds API is the README's: POST /v1/refunds reads a pydantic model with `amount: int`.
The canonical cases' routes (deploys, repositories, files) say what they acted on, and record
it: GET /compat/seen lists it, for the suite to ask directly, outside every agent.

Tornado and aiohttp read a refund's `amount` from a form as each does (Tornado reads any
Content-Type that starts as a form's as one; aiohttp decodes RFC 2047 words in it and finds a
charset in a comment or an RFC 2231 continuation), else from the JSON body; their
repositories' routes are POST (update) and DELETE (delete). They record what they acted on too.
"""

import asyncio
import json
import logging
import sys

import uvicorn


def fastapi_app(server="fastapi"):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel

    class Refund(BaseModel):
        amount: int

    app = FastAPI()

    @app.post("/v1/refunds")
    def refund(r: Refund):
        return {"refunded": r.amount, "server": server}

    @app.get("/v1/quota")
    def quota():
        return {"quota": "ok", "server": server}

    @app.get("/v1/events")
    async def events(n: int = 5, gap_ms: int = 20):
        async def stream():
            for i in range(1, n + 1):
                yield f"data: {i}\n\n"
                if i < n:
                    await asyncio.sleep(gap_ms / 1000)

        return StreamingResponse(stream(), media_type="text/event-stream")

    seen = []  # what the routes below acted on

    def saw(request, **what):
        seen.append({"method": request.method, "path": request.url.path, **what})

    @app.post("/v1/deploy")
    def deploy(request: Request):
        dry_run = request.headers.get("x-dry-run")
        saw(request, x_dry_run=dry_run)
        return {"real_deploy": dry_run != "true", "server": server}

    @app.post("/v1/repos/{name}")
    def update_repo(name: str, request: Request):
        saw(request)
        return {"updated": name, "method": request.method, "server": server}

    @app.get("/files/{name}")
    def file(name: str, request: Request):
        saw(request)
        return {"file": name, "server": server}

    # A Starlette route (FastAPI's own `@app.get` routes answer HEAD 405): Starlette runs a
    # GET route's endpoint for HEAD too.
    def export(request):
        saw(request)
        return JSONResponse({"exported": request.path_params["kind"], "server": server})

    app.add_route("/v1/export/{kind}", export, methods=["GET"])

    # A custom method after a colon (the style of Google's APIs): Starlette matches routes on
    # the decoded path, so /v1/jobs/nightly%3Acancel runs `cancel`.
    @app.post("/v1/jobs/{job}:{action}")
    def job_action(job: str, action: str, request: Request):
        saw(request, job=job, action=action)
        return {"job": job, "action": action, "server": server}

    @app.get("/compat/seen")
    def what_was_seen():
        return seen

    return app


def mcp_app(name):
    from mcp.server.mcpserver import Context, MCPServer

    # Quiet: the suite prints a line per case; the server speaks only of problems.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    from mcp.server.transport_security import TransportSecuritySettings

    server = MCPServer("compat")

    @server.tool()
    def search(query: str) -> str:
        """Search the catalogue."""
        return f"results for {query}"

    @server.tool()
    def run_shell(cmd: str) -> str:
        """Run a shell command (the policy never lets a call through)."""
        return f"ran {cmd}"

    @server.tool()
    def refund(amount: int) -> str:
        """Issue a refund."""
        return f"refunded {amount}"

    @server.tool()
    def lookup(key: str) -> str:
        """Look a key up (metered by the policy)."""
        return f"value of {key}"

    @server.tool()
    async def countdown(n: int, ctx: Context) -> str:
        """Count down, reporting progress on the way (a streamed answer)."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n)
            await asyncio.sleep(0.02)  # paces the progress events: the streamed answer under test
        return "liftoff"

    # The server checks the Host header (DNS rebinding protection): the proxy forwards the
    # agent's own.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{name}:*", name],
        allowed_origins=[],
    )
    app = server.streamable_http_app(transport_security=security)
    sse = server.sse_app(transport_security=security)
    app.router.routes.extend(sse.routes)
    return app


def tornado_serve(host, port):
    import json

    import tornado.ioloop
    import tornado.web

    seen = []

    class Handler(tornado.web.RequestHandler):
        def saw(self, **what):
            seen.append({"method": self.request.method, "path": self.request.path, **what})

        def answer(self, **what):
            self.write({**what, "server": "tornado"})

    class Refund(Handler):
        def post(self):
            amount = self.get_body_argument("amount", None)  # a form's
            if amount is None:
                amount = json.loads(self.request.body).get("amount")
            self.saw(amount=amount)
            self.answer(refunded=amount)

    class Repo(Handler):
        def post(self, name):
            self.saw()
            self.answer(updated=name, method=self.request.method)

        def delete(self, name):
            self.saw()
            self.answer(deleted=name)

    class Seen(Handler):
        def get(self):
            self.set_header("content-type", "application/json")
            self.write(json.dumps(seen))

    app = tornado.web.Application(
        [(r"/v1/refunds", Refund), (r"/v1/repos/([^/]+)", Repo), (r"/compat/seen", Seen)]
    )
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    app.listen(port, host)
    tornado.ioloop.IOLoop.current().start()


def aiohttp_serve(host, port):
    from aiohttp import web

    seen = []

    def saw(request, **what):
        seen.append({"method": request.method, "path": request.path, **what})

    def answer(**what):
        return web.json_response({**what, "server": "aiohttp"})

    async def refund(request):
        amount = (await request.post()).get("amount")  # a form's
        if amount is None:
            amount = (await request.json()).get("amount")
        saw(request, amount=amount)
        return answer(refunded=amount)

    async def repo_post(request):
        saw(request)
        return answer(updated=request.match_info["name"], method=request.method)

    async def repo_delete(request):
        saw(request)
        return answer(deleted=request.match_info["name"])

    async def what_was_seen(request):
        return web.json_response(seen)

    app = web.Application()
    app.add_routes(
        [
            web.post("/v1/refunds", refund),
            web.post("/v1/repos/{name}", repo_post),
            web.delete("/v1/repos/{name}", repo_delete),
            web.get("/compat/seen", what_was_seen),
        ]
    )
    web.run_app(app, host=host, port=port, print=None, access_log=None)


def stdlib_serve(host, port):
    """Python's own `http.server`, HTTP/1.1 with keep-alive. Its ping route answers without
    reading the request's body, and the server then reads that body as the next request on
    the connection (red team round 24): a refund hidden in a ping's body was acted on."""
    import http.server

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, what):
            data = json.dumps(what).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path == "/v1/ping":
                return self.answer({"pong": True, "server": "stdlib"})
            if self.path == "/v1/refunds":
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                seen.append({"route": "refund", "amount": body.get("amount")})
                return self.answer({"refunded": body.get("amount"), "server": "stdlib"})
            self.send_error(404)

        def do_GET(self):
            if self.path == "/compat/seen":
                return self.answer(seen)
            self.send_error(404)

    http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()


def main():
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "fastapi":
        app = fastapi_app(*sys.argv[4:5])
    elif kind == "mcp":
        app = mcp_app(sys.argv[4])
    elif kind == "tornado":
        return tornado_serve(host, port)
    elif kind == "aiohttp":
        return aiohttp_serve(host, port)
    elif kind == "stdlib":
        return stdlib_serve(host, port)
    else:
        sys.exit(f"unknown server {kind}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
