//! HTTP compatibility: real clients against real frameworks, through the kernel redirect and
//! the policy proxy, on the host kernel.
//!
//! Upstreams on loopback, outside every agent: FastAPI on uvicorn, Express 5, the MCP SDK's
//! server (streamable HTTP and the legacy SSE transport), Symfony on PHP's built-in server,
//! Sinatra on Rack 2.2, Tornado and aiohttp. Clients, each in an agent cgroup of its own (its
//! own throttle buckets): curl, Python requests, httpx over HTTP/1.1 and over h2c, aiohttp,
//! Node's fetch, and the MCP SDK's client over both transports. Each client meets each verdict
//! on FastAPI and Express: allow, block (the JSON reason), escalate then approve (from outside
//! the agent), throttle (429), and a streamed response read to its end. Then curl sends what
//! the two frameworks could read otherwise than the proxy decides (a header `Connection`
//! names, a header twice or with `_` for `-`, a `_method` override in a POST body in any
//! spelling or content coding, an allowed path in another case, a HEAD to a GET route, a Host
//! naming another service on the same address: see docs/http.md, "Canonical interpretation"),
//! each beside the request it disguises, which the framework acts on as decided; and to
//! Symfony, Sinatra, Tornado and aiohttp, the names, Content-Types and untyped bodies each
//! reads its own way (PHP's parameter names, JSON bodies read as forms, charsets aiohttp finds),
//! and (red team round 5) a crafted TLS ClientHello to Sinatra's plaintext port, a `Connection`
//! naming `Content-Type`, and a `_method` in a gzip header's comment to PHP.
//!
//! The scripts are in tests/compat/; `cargo xtask setup` installs their packages at the
//! versions pinned there. Missing packages fail the suite, never skip it. One line per case
//! (`compat: ok ...` or `compat: FAILED ...`), then a count line; `cargo xtask test` counts
//! the cases.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use governance_tests::{
    Daemon, Reaped, TestCgroup, command_in, pin_dir, require_root, start_daemon, stop_daemon,
    wait_for_value, wait_until,
};
use serde_json::{Value, json};

/// The upstreams' addresses (the policy sends the agents' connects there through the proxy).
const FASTAPI_IP: [u8; 4] = [127, 0, 0, 21];
const EXPRESS_IP: [u8; 4] = [127, 0, 0, 22];
const MCP_IP: [u8; 4] = [127, 0, 0, 23];
const SYMFONY_IP: [u8; 4] = [127, 0, 0, 24];
const SINATRA_IP: [u8; 4] = [127, 0, 0, 25];
const TORNADO_IP: [u8; 4] = [127, 0, 0, 26];
const AIOHTTP_IP: [u8; 4] = [127, 0, 0, 27];
const STDLIB_IP: [u8; 4] = [127, 0, 0, 28];
const FASTAPI_HOST: &str = "api.fastapi.example";
const EXPRESS_HOST: &str = "api.express.example";
const MCP_HOST: &str = "mcp.tools.example";
const SYMFONY_HOST: &str = "api.symfony.example";
const SINATRA_HOST: &str = "api.sinatra.example";
const TORNADO_HOST: &str = "api.tornado.example";
const AIOHTTP_HOST: &str = "api.aiohttp.example";
/// Python's `http.server`: a route that answers without reading the request's body.
const STDLIB_HOST: &str = "api.stdlib.example";
/// Sinatra again, under a name the policy allows at host level with finer blocks (a DELETE of a
/// repository): TLS to it must not be spliced (red team round 5, F1).
const OPEN_SINATRA_HOST: &str = "open.sinatra.example";
/// Another service on Express's address (a FastAPI app on a port of its own), which the policy
/// lets no agent reach: a Host naming Express on a connection to it must not be decided as
/// Express.
const INTERNAL_HOST: &str = "internal.express.example";

const LARGE_REASON: &str = "Refunds over $1,000 are never issued by an agent.";
const SHELL_REASON: &str = "No shell tool for agents.";
const DEPLOY_REASON: &str = "Agents deploy only as a dry run.";

/// The HTTP clients (each also an agent cgroup's name), and the MCP SDK's transports.
const HTTP_CLIENTS: &[&str] = &[
    "curl",
    "requests",
    "httpx",
    "httpx-h2c",
    "aiohttp",
    "node-fetch",
];
/// The MCP SDK's client: streamable HTTP as it negotiates by default (the 2026 protocol: no
/// session), streamable HTTP with the 2025 handshake (a session: `GET /mcp` for its event
/// stream, `DELETE /mcp` at the end), and the legacy SSE transport.
const MCP_CLIENTS: &[&str] = &["mcp-streamable", "mcp-streamable-2025", "mcp-sse"];

/// The scripts (tests/compat).
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compat")
}

/// Where `cargo xtask setup` installs the suite's packages: GOVERNANCE_COMPAT_DIR, else
/// `~/.cache/governance/compat` (XDG_CACHE_HOME honoured), as the setup computes it.
fn install_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GOVERNANCE_COMPAT_DIR") {
        return d.into();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("governance/compat")
}

/// What the setup writes to `installed` once the pinned packages are in: the pin files
/// themselves (see xtask/src/setup.rs).
fn pins_stamp(scripts: &Path) -> String {
    let mut stamp = String::new();
    for f in ["requirements.txt", "package.json", "package-lock.json"] {
        let text = std::fs::read_to_string(scripts.join(f))
            .unwrap_or_else(|e| panic!("reading {}: {e}", scripts.join(f).display()));
        stamp.push_str(&format!("== {f}\n{text}"));
    }
    stamp
}

/// A free port on `ip` (bound, then released for the upstream to take).
fn free_port(ip: [u8; 4]) -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::from(ip), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start an upstream (outside every agent) and wait until it accepts connections.
fn serve(what: &str, cmd: &mut Command, addr: SocketAddr) -> Reaped {
    let mut child = Reaped(
        cmd.stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {what} upstream: {e}")),
    );
    wait_until(
        &format!("the {what} upstream to listen on {addr}"),
        Duration::from_secs(60),
        || {
            let up = TcpStream::connect(addr).is_ok();
            assert!(
                matches!(child.try_wait(), Ok(None)),
                "the {what} upstream exited (its errors are above)"
            );
            up
        },
    );
    child
}

/// What one client does in one process.
enum Op {
    Request {
        method: &'static str,
        url: String,
        body: Option<String>,
    },
    Stream {
        url: String,
    },
    /// A request with exactly these headers and this body (curl only; `@FILE` sends the
    /// file's bytes; a header `name:` with no value removes one curl would add, such as the
    /// form Content-Type of `--data-binary`). A HEAD is sent as one (`curl -I`), which reads no
    /// body.
    Raw {
        method: &'static str,
        url: String,
        headers: Vec<String>,
        body: Option<String>,
    },
    Mcp {
        tool: &'static str,
        arguments: Value,
    },
}

struct Suite {
    python: PathBuf,
    node_modules: PathBuf,
    resolve: Vec<(&'static str, SocketAddr)>,
    urls: Urls,
    agents: Vec<(String, PathBuf)>,
    daemon: Daemon,
    /// Request bodies curl sends from files (`@FILE`: bytes no argument carries).
    bodies: PathBuf,
    passed: u32,
    failed: u32,
}

struct Urls {
    fastapi: String,
    express: String,
    symfony: String,
    sinatra: String,
    tornado: String,
    aiohttp: String,
    stdlib: String,
    /// The other service on Express's address.
    internal: String,
    mcp_port: u16,
}

impl Suite {
    fn agent(&self, client: &str) -> &Path {
        &self
            .agents
            .iter()
            .find(|(c, _)| c == client)
            .expect("an agent per client")
            .1
    }

    /// The agent's cgroup path relative to the cgroup2 mount (as records name it).
    fn agent_rel(&self, client: &str) -> String {
        let root = governance::agents::cgroup2_mount().unwrap();
        self.agent(client)
            .strip_prefix(&root)
            .unwrap()
            .display()
            .to_string()
    }

    /// The command that makes `client` do `op`, inside its agent.
    fn command(&self, client: &str, op: &Op) -> Command {
        let agent = Some(self.agent(client));
        let resolve: Vec<String> = self
            .resolve
            .iter()
            .map(|(h, a)| format!("{h}={}", a.ip()))
            .collect();
        let mut cmd = match client {
            "curl" => {
                let mut args: Vec<String> = vec!["-sS".into(), "-i".into()];
                for (h, a) in &self.resolve {
                    args.push("--resolve".into());
                    args.push(format!("{h}:{}:{}", a.port(), a.ip()));
                }
                match op {
                    Op::Request { method, url, body } => {
                        args.extend(["--max-time", "60", "-X", method].map(String::from));
                        if let Some(b) = body {
                            args.extend(
                                ["-H", "content-type: application/json", "--data-binary", b]
                                    .map(String::from),
                            );
                        }
                        args.push(url.clone());
                    }
                    Op::Stream { url } => {
                        args.extend(["-N", "--max-time", "90"].map(String::from));
                        args.push(url.clone());
                    }
                    Op::Raw {
                        method,
                        url,
                        headers,
                        body,
                    } => {
                        // `-g`: `[` and `]` in the URL are sent as they are, never globbed.
                        args.extend(["--max-time", "60", "-g"].map(String::from));
                        if *method == "HEAD" {
                            args.push("-I".into());
                        } else {
                            args.extend(["-X", method].map(String::from));
                        }
                        for h in headers {
                            args.extend(["-H".into(), h.clone()]);
                        }
                        if let Some(b) = body {
                            args.extend(["--data-binary".into(), b.clone()]);
                        }
                        args.push(url.clone());
                    }
                    Op::Mcp { .. } => unreachable!("curl is not an MCP client here"),
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                command_in(agent, "curl", &args)
            }
            "node-fetch" => {
                let script = scripts().join("client.js");
                let mut args = vec![script.display().to_string()];
                args.extend(op_args(op));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut cmd = command_in(agent, "node", &args);
                cmd.env("NODE_PATH", &self.node_modules);
                cmd
            }
            _ => {
                let script = scripts().join("client.py");
                let mut args = vec![script.display().to_string(), client.to_owned()];
                if let Op::Mcp { tool, arguments } = op {
                    let path = if client == "mcp-sse" { "sse" } else { "mcp" };
                    args.push(format!("http://{MCP_HOST}:{}/{path}", self.urls.mcp_port));
                    args.push((*tool).to_owned());
                    args.push(arguments.to_string());
                } else {
                    args.extend(op_args(op));
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                command_in(agent, self.python.to_str().unwrap(), &args)
            }
        };
        cmd.env("COMPAT_RESOLVE", resolve.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Run `op` with `client` in its agent; what the client saw.
    fn run(&self, client: &str, op: &Op) -> Result<Value, String> {
        let out = self
            .command(client, op)
            .output()
            .map_err(|e| format!("starting {client}: {e}"))?;
        observe(client, op, &out)
    }

    /// Run one case, catching its failure (and panics) so that every case runs and prints.
    fn case(
        &mut self,
        client: &str,
        upstream: &str,
        case: &str,
        f: impl FnOnce(&Suite) -> Result<String, String>,
    ) {
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(self))).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into()))
        });
        let took = started.elapsed().as_secs_f64();
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!(
                    "compat: ok     {client:<19} {upstream:<8} {case:<10} {took:>5.1} s  {detail}"
                );
            }
            Err(why) => {
                self.failed += 1;
                println!(
                    "compat: FAILED {client:<19} {upstream:<8} {case:<10} {took:>5.1} s  {why}"
                );
            }
        }
    }

    /// The id of the request of `client`'s agent waiting for approval, once it is there.
    fn pending(&self, client: &str, field: &str, value: &str) -> String {
        let rel = self.agent_rel(client);
        wait_for_value(
            &format!("{client}'s escalated request ({field} = {value}) to be pending approval"),
            Duration::from_secs(30),
            || {
                let out = self.daemon.cli(&["approvals", "-o", "json"]);
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                v["pending"].as_array()?.iter().find_map(|p| {
                    (p["agent"]["cgroup"] == rel.as_str() && p["object"]["detail"][field] == value)
                        .then(|| p["id"].as_str().map(str::to_owned))?
                })
            },
        )
    }

    /// Escalate, then approve from outside the agent: `op` is held until the approval.
    fn escalate(&self, client: &str, op: &Op, field: &str, value: &str) -> Result<Value, String> {
        let child = self
            .command(client, op)
            .spawn()
            .map_err(|e| format!("starting {client}: {e}"))?;
        let mut child = Reaped(child);
        let id = self.pending(client, field, value);
        let out = self.daemon.cli(&["approve", &id, "--as", "compat-suite"]);
        if !out.status.success() {
            return Err(format!(
                "governance approve {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let status = child.wait().map_err(|e| e.to_string())?;
        let read = |r: Option<std::process::ChildStdout>| {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                std::io::Read::read_to_end(&mut r, &mut s).ok();
            }
            s
        };
        let mut err = Vec::new();
        if let Some(mut e) = stderr {
            std::io::Read::read_to_end(&mut e, &mut err).ok();
        }
        observe(
            client,
            op,
            &Output {
                status,
                stdout: read(stdout),
                stderr: err,
            },
        )
        .map(|v| {
            let mut v = v;
            v["approval"] = id.into();
            v
        })
    }

    /// What the upstream behind `host` says its canonical cases' routes acted on, asked
    /// directly (from outside every agent, past the proxy).
    fn upstream_saw(&self, host: &str) -> Result<Vec<Value>, String> {
        let addr = self
            .resolve
            .iter()
            .find(|(h, _)| *h == host)
            .expect("an upstream per host")
            .1;
        let ask = || -> std::io::Result<String> {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
            std::io::Write::write_all(
                &mut conn,
                format!("GET /compat/seen HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )?;
            let mut answer = String::new();
            std::io::Read::read_to_string(&mut conn, &mut answer)?;
            Ok(answer)
        };
        let answer = ask().map_err(|e| format!("asking {host}'s upstream what it saw: {e}"))?;
        answer
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .ok_or_else(|| format!("{host}'s upstream said what it saw as no JSON list: {answer}"))
    }

    /// Run `op` with `client`: what it saw, and what the upstream behind `host` acted on
    /// meanwhile.
    fn run_seen(&self, client: &str, host: &str, op: &Op) -> Result<(Value, Vec<Value>), String> {
        let before = self.upstream_saw(host)?.len();
        let v = self.run(client, op)?;
        let mut saw = self.upstream_saw(host)?;
        Ok((v, saw.split_off(before.min(saw.len()))))
    }

    /// The HTTP decisions of `client`'s agent: (method, url, outcome, rule).
    fn decisions(&self, client: &str) -> Vec<(String, String, String, String)> {
        let rel = self.agent_rel(client);
        let out = self
            .daemon
            .cli(&["events", "--since", "1h", "--kind", "http", "-o", "json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["agent"]["cgroup"] == rel.as_str())
            .map(|r| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (
                    s(&r["object"]["method"]),
                    s(&r["object"]["url"]),
                    s(&r["outcome"]),
                    s(&r["rule"]),
                )
            })
            .collect()
    }
}

/// A client script's arguments for `op` (request and stream).
fn op_args(op: &Op) -> Vec<String> {
    match op {
        Op::Request { method, url, body } => {
            let mut a = vec!["request".to_owned(), (*method).to_owned(), url.clone()];
            a.extend(body.clone());
            a
        }
        Op::Stream { url } => vec!["stream".into(), url.clone()],
        Op::Raw { .. } => unreachable!("only curl sends raw requests here"),
        Op::Mcp { .. } => unreachable!(),
    }
}

/// What a client saw, as JSON: the scripts print it; curl's output is read here.
fn observe(client: &str, op: &Op, out: &Output) -> Result<Value, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if client != "curl" {
        if !out.status.success() {
            return Err(format!(
                "{client} failed ({}): {}",
                out.status,
                tail(&stderr)
            ));
        }
        return serde_json::from_str(stdout.trim()).map_err(|e| {
            format!(
                "{client} printed no JSON ({e}): {} {}",
                stdout.trim(),
                tail(&stderr)
            )
        });
    }
    // curl -i: the head, a blank line, the body.
    let (head, body) = stdout
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("curl ({}): no response: {}", out.status, tail(&stderr)))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or_default().to_owned();
    let status: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: serde_json::Map<String, Value> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().into()))
        .collect();
    let mut v = json!({ "status": status, "version": version, "headers": headers });
    match op {
        Op::Stream { .. } => {
            v["events"] = events_of(body).into();
            v["error"] = if out.status.success() {
                Value::Null
            } else {
                format!("curl {}: {}", out.status, stderr.trim()).into()
            };
        }
        _ => {
            if !out.status.success() {
                return Err(format!("curl failed ({}): {}", out.status, tail(&stderr)));
            }
            v["body"] = body.into();
        }
    }
    Ok(v)
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.trim().lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// The data of each SSE event in `text`.
fn events_of(text: &str) -> Vec<String> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// `ok` or why not.
fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

/// The JSON body of an HTTP observation.
fn body_json(v: &Value) -> Result<Value, String> {
    let text = v["body"].as_str().unwrap_or_default();
    serde_json::from_str(text).map_err(|_| format!("status {}, body not JSON: {text}", v["status"]))
}

fn header<'a>(v: &'a Value, name: &str) -> &'a str {
    v["headers"][name].as_str().unwrap_or_default()
}

fn expect_refund(v: &Value, amount: u64, server: &str) -> Result<String, String> {
    let body = body_json(v)?;
    check(
        v["status"] == 200 && body["refunded"] == amount && body["server"] == server,
        || {
            format!(
                "want 200 refunded {amount} by {server}, got {} {body}",
                v["status"]
            )
        },
    )?;
    Ok(format!("200 {body}"))
}

fn http_cases(s: &mut Suite, client: &'static str, framework: &'static str, base: String) {
    let host = if framework == "fastapi" {
        FASTAPI_HOST
    } else {
        EXPRESS_HOST
    };
    let refund = |amount: u32| Op::Request {
        method: "POST",
        url: format!("{base}/v1/refunds"),
        body: Some(format!("{{\"amount\": {amount}}}")),
    };
    let up = if framework == "fastapi" {
        "FastAPI"
    } else {
        "Express"
    };

    s.case(client, up, "allow", |s| {
        let v = s.run(client, &refund(50))?;
        let detail = expect_refund(&v, 50, framework)?;
        if client == "httpx-h2c" {
            check(v["version"] == "HTTP/2", || {
                format!("h2c: the client spoke {}", v["version"])
            })?;
            return Ok(format!("{detail} over HTTP/2 (h2c)"));
        }
        Ok(detail)
    });

    s.case(client, up, "block", |s| {
        let v = s.run(client, &refund(5000))?;
        let body = body_json(&v)?;
        let rule = format!("compat/refund-large-{framework}");
        check(
            v["status"] == 403
                && body["error"] == "blocked"
                && body["rule"] == rule.as_str()
                && body["reason"] == LARGE_REASON
                && body["decision_id"].as_str().is_some_and(|d| !d.is_empty())
                && header(&v, "x-governance-rule") == rule,
            || {
                format!(
                    "want 403 blocked by {rule} with its reason, got {} {body}",
                    v["status"]
                )
            },
        )?;
        Ok(format!(
            "403 rule={} reason={}",
            body["rule"], body["reason"]
        ))
    });

    s.case(client, up, "escalate", |s| {
        let v = s.escalate(client, &refund(500), "body $.amount", "500")?;
        let detail = expect_refund(&v, 500, framework)?;
        Ok(format!("held, approved {}, then {detail}", v["approval"]))
    });

    s.case(client, up, "throttle", |s| {
        let quota = Op::Request {
            method: "GET",
            url: format!("{base}/v1/quota"),
            body: None,
        };
        let first = s.run(client, &quota)?;
        check(first["status"] == 200, || {
            format!("the first call within the rate: {}", first["status"])
        })?;
        let v = s.run(client, &quota)?;
        let body = body_json(&v)?;
        let rule = format!("compat/quota-{framework}");
        let retry: u64 = header(&v, "retry-after").parse().unwrap_or(0);
        check(
            v["status"] == 429
                && retry >= 1
                && body["error"] == "throttled"
                && body["rule"] == rule.as_str(),
            || {
                format!(
                    "want 429 throttled by {rule} with Retry-After, got {} {v}",
                    v["status"]
                )
            },
        )?;
        Ok(format!(
            "200, then 429 Retry-After: {retry} rule={}",
            body["rule"]
        ))
    });

    s.case(client, up, "sse", |s| {
        let v = s.run(
            client,
            &Op::Stream {
                url: format!("{base}/v1/events?n=5&gap_ms=20"),
            },
        )?;
        let want = ["1", "2", "3", "4", "5"];
        check(
            v["status"] == 200
                && header(&v, "content-type").starts_with("text/event-stream")
                && v["events"] == json!(want)
                && v["error"].is_null(),
            || format!("want 5 events to the end, got {v}"),
        )?;
        Ok(format!("{} events, ended cleanly ({host})", want.len()))
    });
}

/// A refusal of the proxy's own: `status`, the JSON `error` and `rule` and the rule's header,
/// and nothing reaching the upstream.
fn expect_refused(
    v: &Value,
    saw: &[Value],
    status: u16,
    error: &str,
    rule: &str,
) -> Result<String, String> {
    let body = body_json(v)?;
    check(
        v["status"] == status
            && body["error"] == error
            && body["rule"] == rule
            && body["decision_id"].as_str().is_some_and(|d| !d.is_empty())
            && header(v, "x-governance-rule") == rule,
        || {
            format!(
                "want {status} {error:?} by {rule}, got {} {body}",
                v["status"]
            )
        },
    )?;
    check(saw.is_empty(), || {
        format!("refused with {status}, yet the upstream acted on {saw:?}")
    })?;
    Ok(format!(
        "{status} rule={} reason={}, upstream untouched",
        body["rule"], body["reason"]
    ))
}

/// An answer of the upstream itself: 200, `want` in its JSON, and `acted` (method and path,
/// and what else the route records) as the one thing it acted on.
fn expect_acted(v: &Value, saw: &[Value], want: &Value, acted: &Value) -> Result<String, String> {
    let body = body_json(v)?;
    let has = want.as_object().unwrap().iter().all(|(k, w)| &body[k] == w);
    check(v["status"] == 200 && has, || {
        format!("want 200 with {want}, got {} {body}", v["status"])
    })?;
    check(saw == [acted.clone()], || {
        format!("want the upstream to act on {acted} once, it acted on {saw:?}")
    })?;
    Ok(format!("200 {body}"))
}

/// A refusal of a HEAD (an answer without a body): `status` and the rule's header, a decision
/// id, and nothing reaching the upstream.
fn expect_refused_head(
    v: &Value,
    saw: &[Value],
    status: u16,
    rule: &str,
) -> Result<String, String> {
    check(
        v["status"] == status
            && header(v, "x-governance-rule") == rule
            && !header(v, "x-governance-decision").is_empty(),
        || format!("want {status} by {rule}, got {v}"),
    )?;
    check(saw.is_empty(), || {
        format!("refused with {status}, yet the upstream acted on {saw:?}")
    })?;
    Ok(format!("{status} rule={rule}, upstream untouched"))
}

/// `data` as a gzip member, as a client sends a body with `Content-Encoding: gzip`: one
/// deflate block of literals in the fixed Huffman codes (RFC 1951, 3.2.6), so that no byte of
/// `data` shows as itself in what is sent.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let (mut acc, mut used) = (0u32, 0u32);
    // Bits go out least significant first; a Huffman code, most significant first.
    let mut put = |out: &mut Vec<u8>, value: u32, len: u32| {
        acc |= value << used;
        used += len;
        while used >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            used -= 8;
        }
    };
    let code = |c: u32, len: u32| c.reverse_bits() >> (32 - len);
    put(&mut out, 0b011, 3); // the final block, fixed codes
    for &b in data {
        let (c, len) = match u32::from(b) {
            b @ 0..=143 => (0x30 + b, 8),
            b => (0x190 + b - 144, 9),
        };
        put(&mut out, code(c, len), len);
    }
    put(&mut out, 0, 7); // end of block
    put(&mut out, 0, 7); // (flush the last byte)
    let crc = !data.iter().fold(!0u32, |mut c, &b| {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
        c
    });
    out.extend(crc.to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

/// What a framework could read otherwise than the proxy decides (docs/http.md, "Canonical
/// interpretation"), sent by curl, each after the request it would disguise, which the
/// framework acts on as decided.
fn canonical_cases(s: &mut Suite, framework: &'static str, base: String) {
    let (host, up) = if framework == "fastapi" {
        (FASTAPI_HOST, "FastAPI")
    } else {
        (EXPRESS_HOST, "Express")
    };
    let client = "curl";
    let strings = |headers: &[&str]| headers.iter().map(|h| (*h).to_owned()).collect();
    let deploy = |headers: &[&str]| Op::Raw {
        method: "POST",
        url: format!("{base}/v1/deploy"),
        headers: strings(headers),
        body: None,
    };
    let form_type: &[&str] = &["content-type: application/x-www-form-urlencoded"];
    let json_type: &[&str] = &["content-type: application/json"];
    let repo = |headers: &[&str], body: &str| Op::Raw {
        method: "POST",
        url: format!("{base}/v1/repos/prod"),
        headers: strings(headers),
        body: Some(body.to_owned()),
    };
    let file = |name: &str| Op::Raw {
        method: "GET",
        url: format!("{base}/files/{name}"),
        headers: Vec::new(),
        body: None,
    };
    let export = |method: &'static str, kind: &str| Op::Raw {
        method,
        url: format!("{base}/v1/export/{kind}"),
        headers: Vec::new(),
        body: None,
    };
    let deploy_rule = format!("compat/deploy-{framework}");
    let server = framework;

    // Header rules: an allow rule reads `x-dry-run: true`; every other deploy is blocked.
    s.case(client, up, "dry-run", |s| {
        let (v, saw) = s.run_seen(client, host, &deploy(&["x-dry-run: true"]))?;
        let detail = expect_acted(
            &v,
            &saw,
            &json!({"real_deploy": false, "server": server}),
            &json!({"method": "POST", "path": "/v1/deploy", "x_dry_run": "true"}),
        )?;
        let (v, saw) = s.run_seen(client, host, &deploy(&[]))?;
        let body = body_json(&v)?;
        check(
            v["status"] == 403 && body["reason"] == DEPLOY_REASON,
            || {
                format!(
                    "want a real deploy blocked for its reason, got {} {body}",
                    v["status"]
                )
            },
        )?;
        expect_refused(&v, &saw, 403, "blocked", &deploy_rule)?;
        Ok(format!(
            "{detail}; without the header 403 rule={}",
            body["rule"]
        ))
    });
    s.case(client, up, "connection", |s| {
        // The proxy drops the header `Connection` names before forwarding: a Connection naming
        // anything but hop-by-hop headers and connection options is refused (red team round
        // 5, F3).
        let (v, saw) = s.run_seen(
            client,
            host,
            &deploy(&["x-dry-run: true", "Connection: x-dry-run"]),
        )?;
        expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
    });
    s.case(client, up, "hdr-twice", |s| {
        // Starlette takes the first copy, Express joins them ("true, false").
        let (v, saw) = s.run_seen(
            client,
            host,
            &deploy(&["x-dry-run: true", "x-dry-run: false"]),
        )?;
        expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
    });
    s.case(client, up, "hdr-under_", |s| {
        // `X_Dry_Run` is `X-Dry-Run` to CGI and WSGI servers.
        let (v, saw) = s.run_seen(client, host, &deploy(&["X_Dry_Run: true"]))?;
        expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
    });

    // Method overrides: POST to a repository is allowed, DELETE is blocked.
    s.case(client, up, "repo-post", |s| {
        let (v, saw) = s.run_seen(client, host, &repo(form_type, "name=x"))?;
        expect_acted(
            &v,
            &saw,
            &json!({"updated": "prod", "method": "POST", "server": server}),
            &json!({"method": "POST", "path": "/v1/repos/prod"}),
        )
    });
    s.case(client, up, "_method", |s| {
        let (v, saw) = s.run_seen(client, host, &repo(form_type, "_method=DELETE"))?;
        expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
    });
    s.case(client, up, "_method-js", |s| {
        let (v, saw) = s.run_seen(client, host, &repo(json_type, r#"{"_method":"DELETE"}"#))?;
        expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
    });
    if framework == "express" {
        // Express reads `_method` (tests/compat/server.js) from the body as body-parser
        // decodes it: JSON escapes, and gzip or deflate codings inflated.
        let gz_form = |s: &Suite, name: &str, body: &str| {
            let path = s.bodies.join(name);
            std::fs::write(&path, gzip(body.as_bytes())).unwrap();
            Op::Raw {
                method: "POST",
                url: format!("{base}/v1/repos/prod"),
                headers: strings(&[
                    "content-type: application/x-www-form-urlencoded",
                    "content-encoding: gzip",
                ]),
                body: Some(format!("@{}", path.display())),
            }
        };
        s.case(client, up, "repo-gz", |s| {
            // The control: a gzip-coded form, inflated and acted on as the POST it is.
            let (v, saw) = s.run_seen(client, host, &gz_form(s, "name.gz", "name=x"))?;
            expect_acted(
                &v,
                &saw,
                &json!({"updated": "prod", "method": "POST", "name": "x", "server": server}),
                &json!({"method": "POST", "path": "/v1/repos/prod"}),
            )
        });
        s.case(client, up, "_method-gz", |s| {
            let op = gz_form(s, "method.gz", "_method=DELETE");
            let (v, saw) = s.run_seen(client, host, &op)?;
            expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
        });
        s.case(client, up, "_method-qs", |s| {
            // `qs` (the `extended` form parser) reads these names as `_method`.
            let mut details = Vec::new();
            for body in [
                "[_method]=DELETE",
                "_method[]=DELETE",
                "%5B_method%5D=DELETE",
            ] {
                let (v, saw) = s.run_seen(client, host, &repo(form_type, body))?;
                details.push(format!(
                    "{body}: {}",
                    expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")?
                ));
            }
            Ok(details.join("; "))
        });
        s.case(client, up, "_method-\\u", |s| {
            let (v, saw) = s.run_seen(
                client,
                host,
                &repo(json_type, r#"{"\u005fmethod":"DELETE"}"#),
            )?;
            expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
        });
    }

    // Path case: only /files/public.txt is allowed; to a case-sensitive upstream
    // /files/PUBLIC.TXT is another file.
    s.case(client, up, "file", |s| {
        let (v, saw) = s.run_seen(client, host, &file("public.txt"))?;
        expect_acted(
            &v,
            &saw,
            &json!({"file": "public.txt", "server": server}),
            &json!({"method": "GET", "path": "/files/public.txt"}),
        )
    });
    s.case(client, up, "file-case", |s| {
        let (v, saw) = s.run_seen(client, host, &file("PUBLIC.TXT"))?;
        expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")
    });

    // HEAD: the framework runs a GET route's handler for it. Exports are allowed, whatever
    // the method; GET /v1/export/full is blocked, and so its HEAD.
    let export_rule = format!("compat/export-full-{framework}");
    s.case(client, up, "head", |s| {
        let (v, saw) = s.run_seen(client, host, &export("HEAD", "summary"))?;
        check(v["status"] == 200, || format!("want 200, got {v}"))?;
        let acted = json!({"method": "HEAD", "path": "/v1/export/summary"});
        check(saw == [acted.clone()], || {
            format!("want the upstream to act on {acted} once, it acted on {saw:?}")
        })?;
        Ok(format!("200, the upstream ran its GET route for {acted}"))
    });
    s.case(client, up, "head-get", |s| {
        let (v, saw) = s.run_seen(client, host, &export("GET", "full"))?;
        expect_refused(&v, &saw, 403, "blocked", &export_rule)?;
        let (v, saw) = s.run_seen(client, host, &export("HEAD", "full"))?;
        let detail = expect_refused_head(&v, &saw, 403, &export_rule)?;
        Ok(format!("GET 403, HEAD {detail}"))
    });

    if framework == "fastapi" {
        // Reserved characters in a rule's path: Starlette routes on the decoded path, so a
        // rule blocking `/v1/jobs/*:cancel` must block `/v1/jobs/nightly%3Acancel` too.
        let job = |path: &str| Op::Raw {
            method: "POST",
            url: format!("{base}/v1/jobs/{path}"),
            headers: Vec::new(),
            body: None,
        };
        let cancel_rule = format!("compat/job-cancel-{framework}");
        s.case(client, up, "path-%3A", |s| {
            let mut details = Vec::new();
            for path in ["nightly:cancel", "nightly%3Acancel", "nightly%3acancel"] {
                let (v, saw) = s.run_seen(client, host, &job(path))?;
                details.push(format!(
                    "{path}: {}",
                    expect_refused(&v, &saw, 403, "blocked", &cancel_rule)?
                ));
            }
            // The control: another action, escaped, is run (decoded) by the upstream.
            let (v, saw) = s.run_seen(client, host, &job("nightly%3Arun"))?;
            details.push(expect_acted(
                &v,
                &saw,
                &json!({"job": "nightly", "action": "run", "server": server}),
                &json!({"method": "POST", "path": "/v1/jobs/nightly:run", "job": "nightly", "action": "run"}),
            )?);
            Ok(details.join("; "))
        });
    }

    if framework == "express" {
        // Another service on Express's address: a Host naming Express (its port, or none) on
        // a connection to that service's port is refused, not decided by Express's rules.
        let public = |base: &str, host: Option<String>| Op::Raw {
            method: "GET",
            url: format!("{base}/files/public.txt"),
            headers: host.into_iter().collect(),
            body: None,
        };
        s.case(client, up, "host-port", |s| {
            let express_host = s.urls.express.trim_start_matches("http://").to_owned();
            let internal_port = s.urls.internal.rsplit(':').next().unwrap().to_owned();
            let mut details = Vec::new();
            for (named, port) in [
                (
                    express_host.clone(),
                    express_host.rsplit(':').next().unwrap().to_owned(),
                ),
                (EXPRESS_HOST.to_owned(), "80".to_owned()),
            ] {
                let op = public(&s.urls.internal, Some(format!("Host: {named}")));
                let (v, saw) = s.run_seen(client, INTERNAL_HOST, &op)?;
                let detail = expect_refused(&v, &saw, 403, "blocked", "builtin:host-check")?;
                let body = body_json(&v)?;
                let want =
                    format!("Host names port {port}, on a connection to port {internal_port}");
                check(body["reason"] == want.as_str(), || {
                    format!("want the reason {want:?}, got {body}")
                })?;
                details.push(format!("Host: {named}: {detail}"));
            }
            // Controls: the same request to Express itself is acted on; the other service's
            // own name is decided by its rules (none: the default).
            let (v, saw) = s.run_seen(client, host, &public(&s.urls.express, None))?;
            expect_acted(
                &v,
                &saw,
                &json!({"file": "public.txt", "server": server}),
                &json!({"method": "GET", "path": "/files/public.txt"}),
            )?;
            let (v, saw) = s.run_seen(client, INTERNAL_HOST, &public(&s.urls.internal, None))?;
            expect_refused(&v, &saw, 403, "blocked", "default")?;
            Ok(details.join("; "))
        });
    }
}

/// PHP's own reading of a request, behind Symfony's method override (tests/compat/server.php):
/// PHP turns `.` and a leading space in a parameter's name into `_` and drops leading spaces
/// (`.method` is `_method`), and reads `X.HTTP.Method.Override` as `X-HTTP-Method-Override`;
/// a header a rule reads, sent again under a `.` spelling, is the same header to it.
/// F1 of red team round 5: a crafted TLS ClientHello to a plaintext server (Sinatra on
/// WEBrick, which reads it as a request head; the red team's app then acted on a DELETE inside
/// its padding, this one answers the head 500 and closes) under a name allowed at host level
/// whose rules look inside requests: never spliced, refused with a TLS alert, the upstream
/// untouched. Before the fix the proxy spliced it and WEBrick's plaintext answer came back.
/// Controls: the same DELETE in plain HTTP is refused by the rule, and a POST in plain HTTP is
/// acted on.
fn tls_splice_cases(s: &mut Suite, sinatra: SocketAddr) {
    let (host, up, client) = (OPEN_SINATRA_HOST, "Sinatra", "curl");
    let base = format!("http://{host}:{}", sinatra.port());
    s.case(client, up, "tls-splice", |s| {
        let (v, saw) = s.run_seen(
            client,
            host,
            &Op::Raw {
                method: "POST",
                url: format!("{base}/v1/repos/prod"),
                headers: vec!["content-type: application/x-www-form-urlencoded".into()],
                body: Some("name=x".into()),
            },
        )?;
        let control = expect_acted(
            &v,
            &saw,
            &json!({"updated": "prod", "method": "POST", "server": "sinatra"}),
            &json!({"method": "POST", "path": "/v1/repos/prod"}),
        )?;
        let (v, saw) = s.run_seen(
            client,
            host,
            &Op::Raw {
                method: "DELETE",
                url: format!("{base}/v1/repos/plain"),
                headers: vec![],
                body: None,
            },
        )?;
        check(
            v["status"] == 403 && header(&v, "x-governance-rule") == "compat/open-sinatra-nodelete",
            || format!("want the plain DELETE refused by the rule, got {v}"),
        )?;
        check(saw.is_empty(), || format!("the plain DELETE was acted on: {saw:?}"))?;
        let before = s.upstream_saw(host)?.len();
        let script = scripts().join("tls_splice.py");
        let inner = format!(
            "DELETE /v1/repos/inner HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Length: 0\\r\\n\\r\\n"
        );
        let out = command_in(
            Some(s.agent(client)),
            s.python.to_str().unwrap(),
            &[
                script.to_str().unwrap(),
                host,
                &sinatra.ip().to_string(),
                &sinatra.port().to_string(),
                &inner,
            ],
        )
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("starting tls_splice.py: {e}"))?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "tls_splice.py said no JSON ({e}): {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let mut saw = s.upstream_saw(host)?;
        let saw = saw.split_off(before.min(saw.len()));
        check(v["alert"] == true, || {
            format!("want a TLS alert from the proxy, got {v}")
        })?;
        check(saw.is_empty(), || {
            format!("refused, yet the upstream acted on {saw:?}")
        })?;
        Ok(format!(
            "plain POST {control}; plain DELETE 403; the ClientHello refused with a TLS alert, upstream untouched"
        ))
    });
}

fn php_cases(s: &mut Suite, base: String) {
    let (host, up, client) = (SYMFONY_HOST, "Symfony", "curl");
    let strings = |headers: &[&str]| headers.iter().map(|h| (*h).to_owned()).collect();
    let repo = |query: &str, headers: &[&str], body: &str| Op::Raw {
        method: "POST",
        url: format!("{base}/v1/repos/prod{query}"),
        headers: strings(headers),
        body: Some(body.to_owned()),
    };
    let form = "content-type: application/x-www-form-urlencoded";
    s.case(client, up, "repo-post", |s| {
        // The control: a form POST is acted on as the POST it is.
        let (v, saw) = s.run_seen(client, host, &repo("", &[form], "name=x"))?;
        expect_acted(
            &v,
            &saw,
            &json!({"updated": "prod", "method": "POST", "server": "symfony"}),
            &json!({"method": "POST", "path": "/v1/repos/prod"}),
        )
    });
    // Red team round 26: PHP runs a script named in the path with the rest as its path info,
    // and Symfony (Laravel too) routes on that, stripping the script's name as a string prefix:
    // `DELETE /server.php/v1/repos/prod` and `/server.phpv1/repos/prod` deleted the repository
    // past `repo-delete-symfony`. Such paths are refused; the repository's own path is decided
    // by the rule.
    s.case(client, up, "script-path-info", |s| {
        let delete = |path: &str| Op::Raw {
            method: "DELETE",
            url: format!("{base}{path}"),
            headers: vec![],
            body: None,
        };
        let (v, saw) = s.run_seen(client, host, &delete("/v1/repos/prod"))?;
        check(
            v["status"] == 403 && header(&v, "x-governance-rule") == "compat/repo-delete-symfony",
            || format!("want the DELETE refused by the rule, got {v}"),
        )?;
        check(saw.is_empty(), || {
            format!("the DELETE was acted on: {saw:?}")
        })?;
        let mut details = vec!["/v1/repos/prod: 403 repo-delete-symfony".to_owned()];
        for path in ["/server.php/v1/repos/prod", "/server.phpv1/repos/prod"] {
            let (v, saw) = s.run_seen(client, host, &delete(path))?;
            details.push(format!(
                "{path}: {}",
                expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")?
            ));
        }
        Ok(details.join("; "))
    });
    s.case(client, up, "_method-php", |s| {
        let part =
            "--b\r\nContent-Disposition: form-data; name=\".method\"\r\n\r\nDELETE\r\n--b--\r\n";
        let multipart = "content-type: multipart/form-data; boundary=b";
        let quoted = part.replace("\".method\"", "'.method'");
        let folded = part.replace(" name=", "\r\n name=");
        let mut details = Vec::new();
        for (what, op) in [
            ("form .method", repo("", &[form], ".method=DELETE")),
            ("form +_method", repo("", &[form], "+_method=DELETE")),
            ("query .method", repo("?.method=DELETE", &[form], "name=x")),
            (
                "query %20_method",
                repo("?%20_method=DELETE", &[form], "name=x"),
            ),
            ("multipart .method", repo("", &[multipart], part)),
            // Round 4: PHP ends a name at a NUL, and reads part names quoted with `'` or on a
            // folded header line.
            ("form _method%00x", repo("", &[form], "_method%00x=DELETE")),
            ("form .method%00", repo("", &[form], ".method%00=DELETE")),
            (
                "query _method%00",
                repo("?_method%00=DELETE", &[form], "name=x"),
            ),
            ("multipart '.method'", repo("", &[multipart], &quoted)),
            ("multipart folded", repo("", &[multipart], &folded)),
            (
                "header X.HTTP.Method.Override",
                repo("", &[form, "X.HTTP.Method.Override: DELETE"], "name=x"),
            ),
        ] {
            let (v, saw) = s.run_seen(client, host, &op)?;
            details.push(format!(
                "{what}: {}",
                expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")?
            ));
        }
        Ok(details.join("; "))
    });
    s.case(client, up, "gzip-comment", |s| {
        // Red team round 5, F4: PHP does not inflate request bodies and reads the gzip bytes
        // as the form, `_method` in the gzip header's comment (FCOMMENT) included.
        let gz = |name: &str, comment: &str| {
            let mut member = gzip(b"name=x");
            member[3] = 0x10;
            let mut rest = member.split_off(10);
            member.extend_from_slice(comment.as_bytes());
            member.push(0);
            member.append(&mut rest);
            let path = s.bodies.join(name);
            std::fs::write(&path, member).unwrap();
            Op::Raw {
                method: "POST",
                url: format!("{base}/v1/repos/prod"),
                headers: strings(&[form, "content-encoding: gzip"]),
                body: Some(format!("@{}", path.display())),
            }
        };
        // The control: the same gzip member with a harmless comment, acted on as a POST.
        let (v, saw) = s.run_seen(client, host, &gz("php-plain.gz", "a comment"))?;
        let control = expect_acted(
            &v,
            &saw,
            &json!({"updated": "prod", "method": "POST", "server": "symfony"}),
            &json!({"method": "POST", "path": "/v1/repos/prod"}),
        )?;
        let (v, saw) = s.run_seen(client, host, &gz("php-method.gz", "&_method=DELETE&"))?;
        let refused = expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")?;
        Ok(format!(
            "control {control}; _method in the comment: {refused}"
        ))
    });
    s.case(client, up, "hdr-dot", |s| {
        let deploy = |headers: &[&str]| Op::Raw {
            method: "POST",
            url: format!("{base}/v1/deploy"),
            headers: strings(headers),
            body: None,
        };
        // The control: a dry run is allowed and acted on as one.
        let (v, saw) = s.run_seen(client, host, &deploy(&["x-dry-run: true"]))?;
        let detail = expect_acted(
            &v,
            &saw,
            &json!({"real_deploy": false, "server": "symfony"}),
            &json!({"method": "POST", "path": "/v1/deploy", "x_dry_run": "true"}),
        )?;
        // PHP keeps the last of `X-Dry-Run` and `X.Dry.Run`: a real deploy.
        let (v, saw) = s.run_seen(
            client,
            host,
            &deploy(&["x-dry-run: true", "X.Dry.Run: false"]),
        )?;
        let refused = expect_refused(&v, &saw, 400, "ambiguous request", "builtin:request")?;
        Ok(format!(
            "dry run {detail}; with X.Dry.Run: false, {refused}"
        ))
    });
}

/// A body the upstream leaves unread is the next request on its connection to it (red team
/// round 24): Python's `http.server` answers the ping route without reading the body, then
/// read a refund of 5000 hidden there as a request the proxy never decided. The proxy does not
/// keep such a connection: the refund is never acted on.
fn unread_body_cases(s: &mut Suite, base: String) {
    let post = |path: &str, ctype: &str, body: &str| Op::Raw {
        method: "POST",
        url: format!("{base}{path}"),
        headers: vec![format!("content-type: {ctype}")],
        body: Some(body.to_owned()),
    };
    s.case("curl", "http.server", "unread-body", |s| {
        // Controls: a refund of 1 is acted on, one of 5000 refused.
        let (v, saw) = s.run_seen(
            "curl",
            STDLIB_HOST,
            &post("/v1/refunds", "application/json", r#"{"amount":1}"#),
        )?;
        check(
            v["status"] == 200 && saw == [json!({"route": "refund", "amount": 1})],
            || format!("want the refund of 1 acted on, got {} {saw:?}", v["status"]),
        )?;
        let (v, saw) = s.run_seen(
            "curl",
            STDLIB_HOST,
            &post("/v1/refunds", "application/json", r#"{"amount":5000}"#),
        )?;
        expect_refused(&v, &saw, 403, "blocked", "compat/refund-large-stdlib")?;
        // As a request line, and with the separators Python splits a line on besides spaces
        // (round 25: a body whose first bytes read as no request line to an ASCII check).
        for sep in [" ", "\u{1c}"] {
            let hidden = format!(
                "POST{sep}/v1/refunds{sep}HTTP/1.1\r\nHost: {STDLIB_HOST}\r\n\
                 Content-Type: application/json\r\nContent-Length: 15\r\n\r\n{{\"amount\":5000}}"
            );
            let (v, saw) = s.run_seen(
                "curl",
                STDLIB_HOST,
                &post("/v1/ping", "text/plain", &hidden),
            )?;
            let body = body_json(&v)?;
            check(v["status"] == 200 && body["pong"] == true, || {
                format!("want the ping answered, got {} {body}", v["status"])
            })?;
            check(saw.is_empty(), || {
                format!("the upstream acted on the refund hidden in the ping's body: {saw:?}")
            })?;
        }
        Ok("a refund hidden in an unread body is never read as a request".into())
    });
}

/// A JSON refund whose bytes also read as a form carrying a larger `amount`.
const SMUGGLED: &str = r#"{"amount":1,"x":"&amount=99999&"}"#;
/// `{"amount":1,...}` in UTF-8; in UTF-7, its `x` holds `","amount":99999,"y":"`, so the
/// object's last `amount` is 99999 (red team round 4).
const UTF7_SMUGGLED: &str =
    r#"{"amount":1,"x":"+ACIALAAiAGEAbQBvAHUAbgB0ACIAOgA5ADkAOQA5ADkALAAiAHkAIgA6ACI-"}"#;

/// Servers that read a JSON body as a form, or a Content-Type otherwise than the proxy did
/// before (red team round 4; docs/http.md, "Canonical interpretation"): Sinatra on Rack 2.2
/// (a POST without a Content-Type or with a list of types is a form; Rack 2 reads `]]amount`
/// as `amount` and `_method]` as `_method`), Tornado (any type that starts as a form's is a
/// form) and aiohttp (RFC 2047 words in a Content-Type; a charset in a comment or an RFC 2231
/// continuation). Each refund route reads `amount` from a form as its framework does, else from
/// the JSON body (tests/compat/server.rb, servers.py): every disguise below made it act on
/// 99999, or delete, before the proxy refused them.
fn form_reading_cases(s: &mut Suite, framework: &'static str, base: String) {
    let (host, up) = match framework {
        "sinatra" => (SINATRA_HOST, "Sinatra"),
        "tornado" => (TORNADO_HOST, "Tornado"),
        _ => (AIOHTTP_HOST, "aiohttp"),
    };
    let client = "curl";
    let post = |path: &str, headers: &[&str], body: &str| Op::Raw {
        method: "POST",
        url: format!("{base}{path}"),
        headers: headers.iter().map(|h| (*h).to_owned()).collect(),
        body: Some(body.to_owned()),
    };
    let refund = |ctype: &str, body: &str| post("/v1/refunds", &[ctype], body);
    let json_type = "content-type: application/json";
    // Each refused with `status` by the proxy's own rule, the upstream untouched: every one is
    // sent, and each that is not refused is named.
    let refused = |s: &Suite, ops: Vec<(&str, Op, u16, &str)>| -> Result<String, String> {
        let (mut details, mut failed) = (Vec::new(), false);
        for (what, op, status, rule) in ops {
            let error = if status == 415 {
                "unsupported media type"
            } else {
                "ambiguous request"
            };
            let outcome = s
                .run_seen(client, host, &op)
                .and_then(|(v, saw)| expect_refused(&v, &saw, status, error, rule));
            failed |= outcome.is_err();
            details.push(format!("{what}: {}", outcome.unwrap_or_else(|e| e)));
        }
        let details = details.join("; ");
        if failed { Err(details) } else { Ok(details) }
    };
    let acted_refund = |v: &Value, saw: &[Value]| {
        expect_acted(
            v,
            saw,
            &json!({"refunded": 1, "server": framework}),
            &json!({"method": "POST", "path": "/v1/refunds", "amount": 1}),
        )
    };
    // The control: a JSON refund of 1 under its own type, acted on as 1.
    s.case(client, up, "refund", |s| {
        let (v, saw) = s.run_seen(client, host, &refund(json_type, r#"{"amount":1}"#))?;
        acted_refund(&v, &saw)
    });
    let list = "content-type: application/x-www-form-urlencoded, application/json";
    match framework {
        "sinatra" => {
            let repo = |headers: &[&str], body: &str| post("/v1/repos/prod", headers, body);
            let form = "content-type: application/x-www-form-urlencoded";
            s.case(client, up, "repo-post", |s| {
                // The control: a form POST is acted on as the POST it is.
                let (v, saw) = s.run_seen(client, host, &repo(&[form], "name=x"))?;
                expect_acted(
                    &v,
                    &saw,
                    &json!({"updated": "prod", "method": "POST", "server": "sinatra"}),
                    &json!({"method": "POST", "path": "/v1/repos/prod"}),
                )
            });
            s.case(client, up, "ct-none", |s| {
                // Rack reads a POST without a Content-Type as a form: `amount=99999`, and a
                // `_method=DELETE` that Rack::MethodOverride acts on.
                refused(
                    s,
                    vec![
                        (
                            "refund",
                            refund("content-type:", SMUGGLED),
                            400,
                            "builtin:body",
                        ),
                        (
                            "repo _method",
                            repo(&["content-type:"], r#"{"note":"x","x":"&_method=DELETE&"}"#),
                            400,
                            "builtin:request",
                        ),
                    ],
                )
            });
            s.case(client, up, "conn-strip", |s| {
                // Red team round 5, F3: `Connection: Content-Type` had the proxy remove the
                // JSON type after deciding on it; Rack then read the body as a form. The
                // control: the same body with its type kept is acted on as the JSON it is.
                let (v, saw) = s.run_seen(
                    client,
                    host,
                    &post("/v1/refunds", &[json_type, "connection: close"], SMUGGLED),
                )?;
                let control = acted_refund(&v, &saw)?;
                let refusals = refused(
                    s,
                    vec![
                        (
                            "refund",
                            post(
                                "/v1/refunds",
                                &[json_type, "connection: content-type"],
                                SMUGGLED,
                            ),
                            400,
                            "builtin:request",
                        ),
                        (
                            "repo _method",
                            repo(
                                &[json_type, "connection: Content-Type"],
                                r#"{"note":"x","x":"&_method=DELETE&"}"#,
                            ),
                            400,
                            "builtin:request",
                        ),
                    ],
                )?;
                Ok(format!("control {control}; {refusals}"))
            });
            s.case(client, up, "forwarded-host", |s| {
                // Red team round 21: Rack takes a request's host from `X-Forwarded-Host` (and
                // Rack 3 from `Forwarded: host=`) whoever sends it, so tenant B's refund route
                // (a `host_name` condition, tests/compat/server.rb) acted on a request decided
                // for this host. The control is the `refund` case above.
                let tenant_b =
                    |header: &str| post("/v1/refunds", &[json_type, header], r#"{"amount":1}"#);
                refused(
                    s,
                    vec![
                        (
                            "X-Forwarded-Host",
                            tenant_b("x-forwarded-host: tenant-b.example"),
                            400,
                            "builtin:request",
                        ),
                        (
                            "X_Forwarded_Host",
                            tenant_b("x_forwarded_host: tenant-b.example"),
                            400,
                            "builtin:request",
                        ),
                        (
                            "Forwarded host",
                            tenant_b("forwarded: for=192.0.2.1;host=tenant-b.example"),
                            400,
                            "builtin:request",
                        ),
                    ],
                )
            });
            s.case(client, up, "ct-list", |s| {
                // Rack takes the first of a list of types: a form.
                refused(
                    s,
                    vec![("refund", refund(list, SMUGGLED), 415, "builtin:body")],
                )
            });
            s.case(client, up, "rack-names", |s| {
                // Rack 2 reads `]]amount` as `amount`, `_method]` and `]]_method` as `_method`.
                let query = |q: &str| {
                    post(
                        &format!("/v1/refunds?{q}=99999"),
                        &[json_type],
                        r#"{"amount":1}"#,
                    )
                };
                refused(
                    s,
                    vec![
                        ("query ]]amount", query("]]amount"), 400, "builtin:body"),
                        (
                            "query %5D%5Damount",
                            query("%5D%5Damount"),
                            400,
                            "builtin:body",
                        ),
                        (
                            "form _method]",
                            repo(&[form], "_method]=DELETE"),
                            400,
                            "builtin:request",
                        ),
                        (
                            "form ]]_method",
                            repo(&[form], "]]_method=DELETE"),
                            400,
                            "builtin:request",
                        ),
                    ],
                )
            });
        }
        "tornado" => {
            s.case(client, up, "ct-prefix", |s| {
                // Tornado reads any type that starts as a form's as a form.
                let ctype = "content-type: application/x-www-form-urlencodedX";
                refused(
                    s,
                    vec![("refund", refund(ctype, SMUGGLED), 415, "builtin:body")],
                )
            });
            s.case(client, up, "ct-list", |s| {
                refused(
                    s,
                    vec![("refund", refund(list, SMUGGLED), 415, "builtin:body")],
                )
            });
        }
        _ => {
            s.case(client, up, "ct-2047", |s| {
                // aiohttp decodes an RFC 2047 word in the Content-Type: a form.
                let ctype = "content-type: =?utf-8?q?application/x-www-form-urlencoded?=";
                refused(
                    s,
                    vec![("refund", refund(ctype, SMUGGLED), 415, "builtin:body")],
                )
            });
            s.case(client, up, "charset", |s| {
                // The control: the body under a plain JSON type is UTF-8 to both, amount 1.
                let (v, saw) = s.run_seen(client, host, &refund(json_type, UTF7_SMUGGLED))?;
                let control = acted_refund(&v, &saw)?;
                // aiohttp finds `charset=utf-7` in an RFC 2231 continuation and behind a
                // comment, and decodes the body as UTF-7.
                let refusals = refused(
                    s,
                    vec![
                        (
                            "charset*0=utf-7",
                            refund(
                                "content-type: application/json; charset*0=utf-7",
                                UTF7_SMUGGLED,
                            ),
                            415,
                            "builtin:body",
                        ),
                        (
                            "(c)charset=utf-7",
                            refund(
                                "content-type: application/json; (c)charset=utf-7",
                                UTF7_SMUGGLED,
                            ),
                            415,
                            "builtin:body",
                        ),
                    ],
                )?;
                Ok(format!("plain JSON {control}; {refusals}"))
            });
        }
    }
}

fn mcp_error<'a>(v: &'a Value, code: i64, rule: &str) -> Result<&'a Value, String> {
    let e = &v["error"];
    check(
        e["code"] == code && e["data"]["rule"] == rule && e["data"]["decision_id"].is_string(),
        || format!("want JSON-RPC error {code} from {rule}, got {v}"),
    )?;
    Ok(e)
}

fn mcp_cases(s: &mut Suite, client: &'static str) {
    let call = |tool: &'static str, arguments: Value| Op::Mcp { tool, arguments };
    let up = "MCP SDK";
    let result = |v: &Value, want: &str| {
        check(v["result"] == want && v["is_error"] == false, || {
            format!("want the result {want:?}, got {v}")
        })
    };

    s.case(client, up, "allow", |s| {
        let v = s.run(client, &call("search", json!({"query": "compat"})))?;
        result(&v, "results for compat")?;
        Ok(format!(
            "protocol {}: tools/call search → {}",
            v["protocol"], v["result"]
        ))
    });

    s.case(client, up, "block", |s| {
        let v = s.run(client, &call("run_shell", json!({"cmd": "id"})))?;
        let e = mcp_error(&v, -32001, "compat/mcp-shell")?;
        let want = format!("blocked by policy: {SHELL_REASON}");
        check(e["message"] == want.as_str(), || {
            format!("want the message {want:?}, got {e}")
        })?;
        Ok(format!(
            "-32001 {} rule={}",
            e["message"], e["data"]["rule"]
        ))
    });

    s.case(client, up, "escalate", |s| {
        let v = s.escalate(
            client,
            &call("refund", json!({"amount": 500})),
            "arguments $.amount",
            "500",
        )?;
        result(&v, "refunded 500")?;
        Ok(format!(
            "held, approved {}, then {}",
            v["approval"], v["result"]
        ))
    });

    s.case(client, up, "throttle", |s| {
        let lookup = call("lookup", json!({"key": "k"}));
        let first = s.run(client, &lookup)?;
        result(&first, "value of k")?;
        let v = s.run(client, &lookup)?;
        let e = mcp_error(&v, -32002, "compat/mcp-lookup")?;
        let retry = e["data"]["retry_after_secs"].as_u64().unwrap_or(0);
        check(retry >= 1, || format!("want retry_after_secs, got {e}"))?;
        Ok(format!("ok, then -32002 retry_after_secs={retry}"))
    });

    s.case(client, up, "stream", |s| {
        let v = s.run(client, &call("countdown", json!({"n": 5})))?;
        result(&v, "liftoff")?;
        check(v["progress"] == json!([1.0, 2.0, 3.0, 4.0, 5.0]), || {
            format!("want 5 progress notifications, got {v}")
        })?;
        Ok("5 progress events streamed, then the result".into())
    });

    // What the transport itself sent, as the proxy decided it.
    s.case(client, up, "transport", |s| {
        let seen = s.decisions(client);
        let has = |method: &str, path: &str, outcome: &str| {
            seen.iter().any(|(m, u, o, _)| {
                m == method
                    && u.split_once(&format!("{MCP_HOST}:{}", s.urls.mcp_port))
                        .is_some_and(|(_, p)| p.starts_with(path))
                    && o == outcome
            })
        };
        let want: &[(&str, &str, &str)] = match client {
            "mcp-sse" => &[
                ("GET", "/sse", "allow"),
                ("POST", "/messages/?session_id=", "allow"),
                ("POST", "/messages/?session_id=", "block"),
            ],
            "mcp-streamable-2025" => &[
                ("POST", "/mcp", "allow"),
                ("GET", "/mcp", "allow"),
                ("DELETE", "/mcp", "allow"),
                ("POST", "/mcp", "block"),
            ],
            _ => &[("POST", "/mcp", "allow"), ("POST", "/mcp", "block")],
        };
        let missing: Vec<String> = want
            .iter()
            .filter(|(m, p, o)| !has(m, p, o))
            .map(|(m, p, o)| format!("{m} {p} {o}"))
            .collect();
        check(missing.is_empty(), || {
            format!("no decision for {missing:?} among {seen:?}")
        })?;
        Ok(want
            .iter()
            .map(|(m, p, o)| format!("{m} {p} {o}"))
            .collect::<Vec<_>>()
            .join(", "))
    });
}

#[test]
fn real_clients_and_frameworks_through_the_kernel_redirect() {
    require_root();
    let started = Instant::now();
    let dir = install_dir();
    let scripts = scripts();
    let stamp = std::fs::read_to_string(dir.join("installed")).unwrap_or_default();
    assert!(
        stamp == pins_stamp(&scripts),
        "the compatibility suite's packages are not installed in {} at the versions pinned in \
         {}: run `cargo xtask setup` (as root), which installs them",
        dir.display(),
        scripts.display()
    );
    let python = dir.join("venv/bin/python");
    let node_modules = dir.join("node/node_modules");

    // Upstreams, outside every agent.
    let ports = (
        free_port(FASTAPI_IP),
        free_port(EXPRESS_IP),
        free_port(MCP_IP),
    );
    // (Another port of Express's address than Express's own.)
    let internal_addr = loop {
        let p = free_port(EXPRESS_IP);
        if p != ports.1 {
            break SocketAddr::from((EXPRESS_IP, p));
        }
    };
    let addr = |ip: [u8; 4], port| SocketAddr::from((ip, port));
    let (fastapi_addr, express_addr, mcp_addr) = (
        addr(FASTAPI_IP, ports.0),
        addr(EXPRESS_IP, ports.1),
        addr(MCP_IP, ports.2),
    );
    let symfony_addr = addr(SYMFONY_IP, free_port(SYMFONY_IP));
    let sinatra_addr = addr(SINATRA_IP, free_port(SINATRA_IP));
    let tornado_addr = addr(TORNADO_IP, free_port(TORNADO_IP));
    let aiohttp_addr = addr(AIOHTTP_IP, free_port(AIOHTTP_IP));
    let stdlib_addr = addr(STDLIB_IP, free_port(STDLIB_IP));
    let py = |args: &[&str]| {
        let mut c = Command::new(&python);
        c.arg(scripts.join("servers.py")).args(args);
        c
    };
    let ip = |a: SocketAddr| a.ip().to_string();
    let port = |a: SocketAddr| a.port().to_string();
    let _fastapi = serve(
        "FastAPI (uvicorn)",
        &mut py(&["fastapi", &ip(fastapi_addr), &port(fastapi_addr)]),
        fastapi_addr,
    );
    let _express = serve(
        "Express",
        Command::new("node")
            .arg(scripts.join("server.js"))
            .args([ip(express_addr), port(express_addr)])
            .env("NODE_PATH", &node_modules),
        express_addr,
    );
    let _mcp = serve(
        "MCP SDK",
        &mut py(&["mcp", &ip(mcp_addr), &port(mcp_addr), MCP_HOST]),
        mcp_addr,
    );
    // PHP reads request parameters and headers its own way (Debian's php-cli and Symfony
    // HttpFoundation, installed by the setup).
    let symfony_seen =
        std::env::temp_dir().join(format!("governance-test-compat-php-{}", std::process::id()));
    let _ = std::fs::remove_file(&symfony_seen);
    let _symfony = serve(
        "Symfony (PHP's built-in server)",
        Command::new("php")
            .arg("-S")
            .arg(symfony_addr.to_string())
            .arg(scripts.join("server.php"))
            .env("GOVERNANCE_COMPAT_SEEN", &symfony_seen)
            .stderr(Stdio::null()),
        symfony_addr,
    );
    // Servers that read JSON bodies as forms under Content-Types the proxy read otherwise
    // (red team round 4): Sinatra on Rack 2.2 (Debian's, installed by the setup), Tornado and
    // aiohttp (pinned in requirements.txt).
    let _sinatra = serve(
        "Sinatra (WEBrick)",
        Command::new("ruby")
            .arg(scripts.join("server.rb"))
            .args([ip(sinatra_addr), port(sinatra_addr)]),
        sinatra_addr,
    );
    let _tornado = serve(
        "Tornado",
        &mut py(&["tornado", &ip(tornado_addr), &port(tornado_addr)]),
        tornado_addr,
    );
    let _aiohttp = serve(
        "aiohttp",
        &mut py(&["aiohttp", &ip(aiohttp_addr), &port(aiohttp_addr)]),
        aiohttp_addr,
    );
    let _stdlib = serve(
        "http.server",
        &mut py(&["stdlib", &ip(stdlib_addr), &port(stdlib_addr)]),
        stdlib_addr,
    );
    let _internal = serve(
        "internal FastAPI",
        &mut py(&[
            "fastapi",
            &ip(internal_addr),
            &port(internal_addr),
            "internal",
        ]),
        internal_addr,
    );

    // An agent per client: its own throttle buckets, its own approvals.
    let parent = TestCgroup::new("compat");
    let agents: Vec<(String, PathBuf)> = HTTP_CLIENTS
        .iter()
        .chain(MCP_CLIENTS)
        .map(|c| ((*c).to_owned(), parent.child(c)))
        .collect();
    let mut rules = String::from(
        "  - id: upstreams\n    network: { cidr: [127.0.0.21/32, 127.0.0.22/32, 127.0.0.23/32, 127.0.0.24/32, 127.0.0.25/32, 127.0.0.26/32, 127.0.0.27/32, 127.0.0.28/32], via_proxy: true }\n    verdict: allow\n    reason: The upstreams are reached only through the HTTP policy engine.\n",
    );
    for (fw, host) in [("fastapi", FASTAPI_HOST), ("express", EXPRESS_HOST)] {
        rules.push_str(&format!(
            "  - {{ id: refund-small-{fw}, http: {{ host: {host}, method: POST, path: /v1/refunds, body: ['$.amount <= 100'] }}, verdict: allow, reason: Refunds up to $100 are routine. }}\n\
             \x20 - {{ id: refund-medium-{fw}, http: {{ host: {host}, method: POST, path: /v1/refunds, body: ['$.amount > 100', '$.amount <= 1000'] }}, verdict: escalate, escalate: {{ timeout: 60s, on_timeout: block }}, reason: Refunds between $100 and $1000 need a human. }}\n\
             \x20 - {{ id: refund-large-{fw}, http: {{ host: {host}, method: POST, path: /v1/refunds, body: ['$.amount > 1000'] }}, verdict: block, reason: '{LARGE_REASON}' }}\n\
             \x20 - {{ id: quota-{fw}, http: {{ host: {host}, method: GET, path: /v1/quota }}, verdict: throttle, throttle: {{ rate: 1, per: 1h, key: agent_rule }}, reason: One quota check an hour. }}\n\
             \x20 - {{ id: events-{fw}, http: {{ host: {host}, method: GET, path: /v1/events }}, verdict: allow, reason: The event stream. }}\n\
             \x20 - {{ id: deploy-dry-run-{fw}, http: {{ host: {host}, method: POST, path: /v1/deploy, headers: {{ x-dry-run: 'true' }} }}, verdict: allow, reason: Dry runs are routine. }}\n\
             \x20 - {{ id: deploy-{fw}, http: {{ host: {host}, method: POST, path: /v1/deploy }}, verdict: block, reason: '{DEPLOY_REASON}' }}\n\
             \x20 - {{ id: repo-update-{fw}, http: {{ host: {host}, method: POST, path: '/v1/repos/*' }}, verdict: allow, reason: Agents update repositories. }}\n\
             \x20 - {{ id: repo-delete-{fw}, http: {{ host: {host}, method: DELETE, path: '/v1/repos/*' }}, verdict: block, reason: Agents never delete repositories. }}\n\
             \x20 - {{ id: public-file-{fw}, http: {{ host: {host}, method: GET, path: /files/public.txt }}, verdict: allow, reason: The public file. }}\n\
             \x20 - {{ id: other-files-{fw}, http: {{ host: {host}, path: '/files/*' }}, verdict: block, reason: Only the public file. }}\n\
             \x20 - {{ id: exports-{fw}, http: {{ host: {host}, path: '/v1/export/*' }}, verdict: allow, reason: Reports are exported. }}\n\
             \x20 - {{ id: export-full-{fw}, http: {{ host: {host}, method: GET, path: /v1/export/full }}, verdict: block, reason: No full exports. }}\n\
             \x20 - {{ id: jobs-{fw}, http: {{ host: {host}, method: POST, path: '/v1/jobs/*' }}, verdict: allow, reason: Agents run jobs. }}\n\
             \x20 - {{ id: job-cancel-{fw}, http: {{ host: {host}, method: POST, path: '/v1/jobs/*:cancel' }}, verdict: block, reason: Jobs run to the end. }}\n"
        ));
    }
    rules.push_str(&format!(
        "  - {{ id: deploy-dry-run-symfony, http: {{ host: {SYMFONY_HOST}, method: POST, path: /v1/deploy, headers: {{ x-dry-run: 'true' }} }}, verdict: allow, reason: Dry runs are routine. }}\n\
         \x20 - {{ id: deploy-symfony, http: {{ host: {SYMFONY_HOST}, method: POST, path: /v1/deploy }}, verdict: block, reason: '{DEPLOY_REASON}' }}\n\
         \x20 - {{ id: repo-update-symfony, http: {{ host: {SYMFONY_HOST}, method: POST, path: '/v1/repos/*' }}, verdict: allow, reason: Agents update repositories. }}\n\
         \x20 - {{ id: repo-delete-symfony, http: {{ host: {SYMFONY_HOST}, method: DELETE, path: '/v1/repos/*' }}, verdict: block, reason: Agents never delete repositories. }}\n"
    ));
    for (fw, host) in [
        ("sinatra", SINATRA_HOST),
        ("tornado", TORNADO_HOST),
        ("aiohttp", AIOHTTP_HOST),
        ("stdlib", STDLIB_HOST),
    ] {
        rules.push_str(&format!(
            "  - {{ id: refund-small-{fw}, http: {{ host: {host}, method: POST, path: /v1/refunds, body: ['$.amount <= 100'] }}, verdict: allow, reason: Refunds up to $100 are routine. }}\n\
             \x20 - {{ id: refund-large-{fw}, http: {{ host: {host}, method: POST, path: /v1/refunds, body: ['$.amount > 100'] }}, verdict: block, reason: Refunds over $100 are never issued by an agent. }}\n\
             \x20 - {{ id: repo-update-{fw}, http: {{ host: {host}, method: POST, path: '/v1/repos/*' }}, verdict: allow, reason: Agents update repositories. }}\n\
             \x20 - {{ id: repo-delete-{fw}, http: {{ host: {host}, method: DELETE, path: '/v1/repos/*' }}, verdict: block, reason: Agents never delete repositories. }}\n"
        ));
    }
    rules.push_str(&format!(
        "  - {{ id: ping-stdlib, http: {{ host: {STDLIB_HOST}, method: POST, path: /v1/ping }}, verdict: allow, reason: Agents ping. }}\n"
    ));
    rules.push_str(&format!(
        "  - {{ id: open-sinatra, http: {{ host: {OPEN_SINATRA_HOST} }}, verdict: allow, reason: The host. }}\n\
         \x20 - {{ id: open-sinatra-nodelete, http: {{ host: {OPEN_SINATRA_HOST}, method: DELETE, path: '/v1/repos/*' }}, verdict: block, reason: Agents never delete repositories. }}\n"
    ));
    rules.push_str(&format!(
        "  - {{ id: mcp-server, http: {{ host: {MCP_HOST} }}, verdict: allow, reason: 'The MCP server: sessions, lists, streams.' }}\n\
         \x20 - {{ id: mcp-shell, http: {{ host: {MCP_HOST}, mcp: {{ tool: run_shell }} }}, verdict: block, reason: '{SHELL_REASON}' }}\n\
         \x20 - {{ id: mcp-refund, http: {{ host: {MCP_HOST}, mcp: {{ tool: refund, arguments: ['$.amount > 100'] }} }}, verdict: escalate, escalate: {{ timeout: 60s, on_timeout: block }}, reason: Refunds over $100 need a human. }}\n\
         \x20 - {{ id: mcp-lookup, http: {{ host: {MCP_HOST}, mcp: {{ tool: lookup }} }}, verdict: throttle, throttle: {{ rate: 1, per: 1h, key: agent_rule }}, reason: One lookup an hour. }}\n\
         \x20 - {{ id: mcp-tools, http: {{ host: {MCP_HOST}, mcp: {{ tool: '*' }} }}, verdict: allow, reason: Other tools. }}\n"
    ));
    let policy = format!(
        "name: compat\nagents: {{ cgroup: '{}/*' }}\ndefaults: {{ http: block }}\n\
         proxy: {{ idle_timeout: {{ {EXPRESS_HOST}: 2s }} }}\nrules:\n{rules}",
        parent.rel.display()
    );
    let policy_dir =
        std::env::temp_dir().join(format!("governance-test-compat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&policy_dir);
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("compat.yaml"), &policy).unwrap();

    let pins = pin_dir("compat");
    let pins_arg = pins.to_str().unwrap().to_owned();
    let hosts = [
        format!("{FASTAPI_HOST}={}", fastapi_addr.ip()),
        format!("{EXPRESS_HOST}={}", express_addr.ip()),
        format!("{MCP_HOST}={}", mcp_addr.ip()),
        format!("{INTERNAL_HOST}={}", internal_addr.ip()),
        format!("{SYMFONY_HOST}={}", symfony_addr.ip()),
        format!("{SINATRA_HOST}={}", sinatra_addr.ip()),
        format!("{OPEN_SINATRA_HOST}={}", sinatra_addr.ip()),
        format!("{TORNADO_HOST}={}", tornado_addr.ip()),
        format!("{AIOHTTP_HOST}={}", aiohttp_addr.ip()),
        format!("{STDLIB_HOST}={}", stdlib_addr.ip()),
    ];
    let mut args = vec![
        "--allow-degraded",
        "--no-create-cgroups",
        "--detach-on-exit",
        "--quiet",
        "--pins",
        &pins_arg,
    ];
    for h in &hosts {
        args.extend(["--proxy-host", h]);
    }
    let (daemon, _) = start_daemon(&args, &policy_dir);
    let bodies = std::env::temp_dir().join(format!(
        "governance-test-compat-bodies-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&bodies);
    std::fs::create_dir_all(&bodies).unwrap();
    let mut s = Suite {
        python,
        node_modules,
        resolve: vec![
            (FASTAPI_HOST, fastapi_addr),
            (EXPRESS_HOST, express_addr),
            (MCP_HOST, mcp_addr),
            (INTERNAL_HOST, internal_addr),
            (SYMFONY_HOST, symfony_addr),
            (SINATRA_HOST, sinatra_addr),
            (OPEN_SINATRA_HOST, sinatra_addr),
            (TORNADO_HOST, tornado_addr),
            (AIOHTTP_HOST, aiohttp_addr),
            (STDLIB_HOST, stdlib_addr),
        ],
        urls: Urls {
            fastapi: format!("http://{FASTAPI_HOST}:{}", ports.0),
            express: format!("http://{EXPRESS_HOST}:{}", ports.1),
            symfony: format!("http://{SYMFONY_HOST}:{}", symfony_addr.port()),
            sinatra: format!("http://{SINATRA_HOST}:{}", sinatra_addr.port()),
            tornado: format!("http://{TORNADO_HOST}:{}", tornado_addr.port()),
            aiohttp: format!("http://{AIOHTTP_HOST}:{}", aiohttp_addr.port()),
            stdlib: format!("http://{STDLIB_HOST}:{}", stdlib_addr.port()),
            internal: format!("http://{INTERNAL_HOST}:{}", internal_addr.port()),
            mcp_port: ports.2,
        },
        agents,
        daemon,
        bodies,
        passed: 0,
        failed: 0,
    };
    println!(
        "compat: upstreams FastAPI {fastapi_addr}, Express {express_addr}, MCP SDK {mcp_addr}, \
         internal FastAPI {internal_addr}, Symfony {symfony_addr}, Sinatra {sinatra_addr}, \
         Tornado {tornado_addr}, aiohttp {aiohttp_addr}, http.server {stdlib_addr}; {} clients, \
         each in its own agent",
        HTTP_CLIENTS.len() + MCP_CLIENTS.len()
    );

    // An event stream quiet for 35 s, longer than the upstream timeout (30 s) that used to
    // cut it: read in the background while the other cases run.
    let quiet = Op::Stream {
        url: format!("{}/v1/events?n=2&gap_ms=35000", s.urls.fastapi),
    };
    let quiet_started = Instant::now();
    let quiet_child = Reaped(s.command("curl", &quiet).spawn().unwrap());

    for client in HTTP_CLIENTS {
        let (fastapi, express) = (s.urls.fastapi.clone(), s.urls.express.clone());
        http_cases(&mut s, client, "fastapi", fastapi);
        http_cases(&mut s, client, "express", express);
    }
    let (fastapi, express) = (s.urls.fastapi.clone(), s.urls.express.clone());
    canonical_cases(&mut s, "fastapi", fastapi);
    canonical_cases(&mut s, "express", express);
    let symfony = s.urls.symfony.clone();
    php_cases(&mut s, symfony);
    tls_splice_cases(&mut s, sinatra_addr);
    for (framework, base) in [
        ("sinatra", s.urls.sinatra.clone()),
        ("tornado", s.urls.tornado.clone()),
        ("aiohttp", s.urls.aiohttp.clone()),
    ] {
        form_reading_cases(&mut s, framework, base);
    }
    let stdlib = s.urls.stdlib.clone();
    unread_body_cases(&mut s, stdlib);
    for client in MCP_CLIENTS {
        mcp_cases(&mut s, client);
    }

    // A host whose policy sets a 2 s idle limit: its stream quiet for 4 s is cut.
    s.case("curl", "Express", "idle-limit", |s| {
        let v = s.run(
            "curl",
            &Op::Stream {
                url: format!("{}/v1/events?n=2&gap_ms=4000", s.urls.express),
            },
        )?;
        check(v["events"] == json!(["1"]) && !v["error"].is_null(), || {
            format!("want the stream cut after its first event, got {v}")
        })?;
        Ok(format!("cut after 2 s of silence: {}", v["error"]))
    });
    s.case("curl", "FastAPI", "sse-quiet", |_| {
        let mut child = quiet_child;
        let out = Output {
            status: child.wait().map_err(|e| e.to_string())?,
            stdout: child
                .stdout
                .take()
                .map(|mut o| {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut o, &mut b).ok();
                    b
                })
                .unwrap_or_default(),
            stderr: Vec::new(),
        };
        let v = observe("curl", &quiet, &out)?;
        let quiet_for = quiet_started.elapsed().as_secs();
        check(
            v["events"] == json!(["1", "2"]) && v["error"].is_null(),
            || format!("want both events across 35 s of silence, got {v}"),
        )?;
        Ok(format!(
            "both events, 35 s apart, stream open {quiet_for} s"
        ))
    });

    let total = s.passed + s.failed;
    println!(
        "compat: {total} cases, {} passed, {} failed in {:.0?}",
        s.passed,
        s.failed,
        started.elapsed()
    );
    let failed = s.failed;
    let _ = std::fs::remove_dir_all(&s.bodies);
    stop_daemon(s.daemon);
    let _ = std::fs::remove_dir_all(&policy_dir);
    let _ = std::fs::remove_file(&symfony_seen);
    assert_eq!(failed, 0, "{failed} compatibility cases failed (see above)");
}
