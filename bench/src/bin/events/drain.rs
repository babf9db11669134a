//! 1. The raw ring drain: how fast the kernel's ring buffer empties.

use super::*;

// ---------------------------------------------------------------------------------------------
// 1. Ring-buffer drain, in process.

pub(super) struct DrainRound {
    pub(super) decoded: bool,
    /// Events drained (what the ring held).
    pub(super) events: u64,
    pub(super) elapsed: Duration,
    pub(super) dropped: u64,
    pub(super) decisions: u64,
}

impl DrainRound {
    pub(super) fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

pub(super) struct DrainResult {
    pub(super) rounds: Vec<DrainRound>,
    pub(super) fill: u64,
}

pub(super) fn drain_bench(env: &Env, rounds: usize) -> Res<DrainResult> {
    let set = ctx(
        policy::parse(&[("bench-events.yaml".into(), env.policy_yaml())]),
        "the benchmark policy",
    )?;
    let found = ctx(
        agents::discover(&env.cgroup_root, &set, false, None),
        "finding the agent cgroup",
    )?;
    let mut enforcer = ctx(
        Enforcer::start(&env.drain_pins, &env.cgroup_root, true),
        "loading the eBPF programs",
    )?;
    let hook = match env.workload {
        Workload::Connect(_) => "connect4",
        Workload::Open(_) => "file_open",
    };
    if !enforcer
        .hooks
        .iter()
        .any(|(p, h)| p.name == hook && matches!(h, HookState::Attached))
    {
        return Err(format!("the {hook} program is not attached on this kernel"));
    }
    let protect = kernel::Protect {
        cgroup_root: env.cgroup_root.clone(),
        no_write: vec![env.drain_pins.clone(), env.policy_dir.clone()],
        no_access: vec![],
        system_links: vec![],
    };
    let compiled = kernel::compile(&set, &found, 1, &protect);
    if !compiled.errors.is_empty() {
        return Err(format!("compiling the policy: {:?}", compiled.errors));
    }
    ctx(enforcer.install(compiled), "installing the policy")?;
    let matching = governance::daemon::generation::selected(&set, &found);
    let names = governance::daemon::generation::names(&set, &found, &matching);
    let clock = Clock::now();
    let mut ring = ctx(enforcer.take_events(), "taking the event ring")?;
    let counters = |e: &Enforcer| -> Res<(u64, u64)> {
        Ok((
            ctx(e.counter(Counter::Decisions), "reading the counters")?,
            ctx(e.counter(Counter::EventsDropped), "reading the counters")?,
        ))
    };
    // Twice what the ring holds: it fills, and the rest is dropped and counted.
    let fill = 2 * RING_EVENTS as u64;
    let mut out = Vec::new();
    // Round 0 warms up (the ring's pages are touched for the first time) and is not counted.
    for round in 0..=2 * rounds {
        let decoded = round % 2 == 0;
        let (d0, x0) = counters(&enforcer)?;
        flood(env, 1, fill, 0, &mut None)?;
        let (d1, x1) = counters(&enforcer)?;
        let start = Instant::now();
        let mut n = 0u64;
        if decoded {
            let mut batch: Vec<Record> = Vec::with_capacity(governance::pipeline::BATCH);
            let mut batches = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(ev) = events::parse(&item) {
                    drop(item);
                    batch.push(Record::from_kernel(&ev, &names, &clock));
                    n += 1;
                    if batch.len() == governance::pipeline::BATCH {
                        batches.push(std::mem::replace(
                            &mut batch,
                            Vec::with_capacity(governance::pipeline::BATCH),
                        ));
                    }
                }
            }
            let elapsed = start.elapsed();
            black_box((&batch, &batches));
            drop((batch, batches));
            out.push((round, decoded, n, elapsed, x1 - x0, d1 - d0));
        } else {
            let mut acc = 0u64;
            while let Some(item) = ring.next() {
                if let Some(ev) = events::parse(&item) {
                    acc ^= ev.time_ns ^ u64::from(ev.tgid);
                    n += 1;
                }
            }
            let elapsed = start.elapsed();
            black_box(acc);
            out.push((round, decoded, n, elapsed, x1 - x0, d1 - d0));
        }
        let last = out.last().expect("pushed");
        eprintln!(
            "bench: drain round {round}/{}{} {}: {} events in {:.2} ms = {}/s; {} dropped, {} decisions",
            2 * rounds,
            if round == 0 { " (warm-up)" } else { "" },
            if decoded { "decoded" } else { "raw" },
            last.2,
            last.3.as_secs_f64() * 1e3,
            ops(last.2 as f64 / last.3.as_secs_f64()),
            last.4,
            last.5
        );
    }
    drop(ring);
    drop(enforcer);
    ctx(kernel::unload(&env.drain_pins), "removing the pins")?;
    Ok(DrainResult {
        rounds: out
            .into_iter()
            .filter(|r| r.0 > 0)
            .map(
                |(_, decoded, events, elapsed, dropped, decisions)| DrainRound {
                    decoded,
                    events,
                    elapsed,
                    dropped,
                    decisions,
                },
            )
            .collect(),
        fill,
    })
}
