//! `cargo xtask bench policy`: the HTTP decision on 1,000 rules, ours against regorus (Rego,
//! compiled, in process) on an equivalent policy, in the same run, reported as p50/p99 and the
//! ratio of medians.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use governance::{
    engine::{Action, AgentRef, Engine, HttpRequest},
    policy,
};

const RULES: usize = 1000;
const ROUNDS: usize = 3;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Time `f` once per iteration; returns sorted per-call durations.
fn measure(iterations: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..iterations / 10 {
        f();
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    samples
}

fn ours() -> impl FnMut() {
    let mut yaml = String::from("name: bench\nagents: { label: bench }\nrules:\n");
    for i in 0..RULES {
        yaml.push_str(&format!(
            "  - {{ id: r{i}, http: {{ host: svc{i}.example, method: POST, path: /v1/items, body: ['$.amount > {i}'] }}, verdict: block, reason: r }}\n"
        ));
    }
    let set = policy::parse(&[("bench.yaml".into(), yaml)]).expect("bench policy");
    let engine = Engine::new(set, 1);
    let agent = AgentRef {
        name: "bench".into(),
        cgroup: "bench".into(),
        label: Some("bench".into()),
        pod: None,
    };
    let view = engine.agent(&agent);
    let action = Action::Http(HttpRequest {
        method: "POST".into(),
        host: "svc500.example".into(),
        path: "/v1/items".into(),
        headers: vec![],
        body: Some(serde_json::json!({ "amount": 900 })),
    });
    let d = engine.decide(&view, &action, Instant::now());
    assert_eq!(d.rule.as_deref(), Some("bench/r500"), "{d:?}");
    move || {
        std::hint::black_box(engine.decide(&view, std::hint::black_box(&action), Instant::now()));
    }
}

/// The Rego peer. `indexed`: rules grouped by host in the data, looked up by the request's host
/// (as our engine does); otherwise the plain Rego formulation that iterates every rule.
fn rego(indexed: bool) -> impl FnMut() {
    let rules: Vec<_> = (0..RULES)
        .map(|i| serde_json::json!({ "host": format!("svc{i}.example"), "method": "POST", "path": "/v1/items", "min": i }))
        .collect();
    let by_host: serde_json::Map<String, serde_json::Value> = rules
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap_or_default().to_owned(),
                serde_json::json!([r]),
            )
        })
        .collect();
    let data = serde_json::json!({ "rules": rules, "by_host": by_host }).to_string();
    let lookup = if indexed {
        "some r in data.by_host[input.host]"
    } else {
        "some r in data.rules"
    };
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(
            "bench.rego".into(),
            format!(
                r#"package bench
import rego.v1
default verdict := "allow"
verdict := "block" if {{
    {lookup}
    input.host == r.host
    input.method == r.method
    input.path == r.path
    input.body.amount > r.min
}}
"#
            ),
        )
        .expect("rego policy");
    engine
        .add_data(regorus::Value::from_json_str(&data).expect("data"))
        .expect("data");
    let compiled = engine
        .compile_with_entrypoint(&"data.bench.verdict".into())
        .expect("compile");
    let input = regorus::Value::from_json_str(
        r#"{"host": "svc500.example", "method": "POST", "path": "/v1/items", "body": {"amount": 900}}"#,
    )
    .expect("input");
    let v = compiled.eval_with_input(input.clone()).expect("eval");
    assert_eq!(v, regorus::Value::from("block"), "rego verdict");
    move || {
        std::hint::black_box(
            compiled
                .eval_with_input(std::hint::black_box(input.clone()))
                .ok(),
        );
    }
}

/// The HTTP decision on 1,000 rules, ours against regorus (Rego, compiled, in process) on an
/// equivalent policy, in the same run, reported as p50/p99 per call and the ratio of medians.
/// Run by `cargo xtask bench policy`.
#[derive(Parser)]
#[command(name = "governance-bench")]
struct Opts {
    /// The benchmark to run.
    #[arg(value_enum, default_value_t = Which::Policy)]
    which: Which,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// The HTTP decision on 1,000 rules, against regorus.
    Policy,
}

fn main() {
    let Opts {
        which: Which::Policy,
    } = Opts::parse();
    let mut ours_fn = ours();
    let mut peers = [
        ("regorus, rules iterated", rego(false), 2_000),
        ("regorus, indexed by host", rego(true), 20_000),
    ];
    println!(
        "HTTP decision, {RULES} rules, one thread, per-call latency ({ROUNDS} interleaved rounds)"
    );
    let mut ratios = vec![Vec::new(); peers.len()];
    for round in 1..=ROUNDS {
        let ours = measure(200_000, &mut ours_fn);
        let (o50, o99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
        println!("  round {round}: governance                p50 {o50:>9.2?}  p99 {o99:>9.2?}");
        for (i, (name, peer, iterations)) in peers.iter_mut().enumerate() {
            let peer = measure(*iterations, peer);
            let (r50, r99) = (percentile(&peer, 0.5), percentile(&peer, 0.99));
            let ratio = r50.as_secs_f64() / o50.as_secs_f64();
            ratios[i].push(ratio);
            println!(
                "           {name:<26} p50 {r50:>9.2?}  p99 {r99:>9.2?}  ({ratio:.0}x governance's p50)"
            );
        }
    }
    for ((name, _, _), mut r) in peers.iter().zip(ratios) {
        r.sort_by(f64::total_cmp);
        println!(
            "median p50 ratio, {name} / governance: {:.0}x (range {:.0}x to {:.0}x)",
            r[r.len() / 2],
            r[0],
            r[r.len() - 1]
        );
    }
}
