//! The benchmark's options, its run, and its report.

use super::*;

// ---------------------------------------------------------------------------------------------
// The benchmark and its report.

/// How many decision events per second get from the kernel to the audit log and a live
/// subscriber, and what happens to the ones that do not: a flood of denied actions from an agent
/// cgroup, measured at the ring buffer (drained in this process) and through a real `governance
/// run` (audit log, metrics, one subscriber), with 1, 2 or 4 producers; every lost event must
/// be counted. Needs root; run by `cargo xtask bench events`.
#[derive(Parser)]
#[command(name = "governance-bench-events")]
pub(super) struct Opts {
    /// The governance binary to start as the daemon (not needed with --skip-pipeline).
    #[arg(
        long,
        env = "GOVERNANCE_BIN",
        value_name = "PATH",
        required_unless_present = "pipeline"
    )]
    pub(super) governance: Option<PathBuf>,
    /// Rounds of the full pipeline, each over every producer count.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = positive::<usize>)]
    pub(super) rounds: usize,
    /// Rounds of the ring-buffer drain (raw and decoded alternate).
    #[arg(long, value_name = "N", default_value_t = 7, value_parser = positive::<usize>)]
    pub(super) drain_rounds: usize,
    /// Seconds each pipeline flood lasts.
    #[arg(long, value_name = "S", default_value_t = 3, value_parser = positive::<u64>)]
    pub(super) secs: u64,
    /// Producer processes in the agent cgroup, one pipeline run per count, comma-separated.
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1,2,4",
        value_parser = positive::<usize>
    )]
    pub(super) producers: Vec<usize>,
    /// What the producers flood with.
    #[arg(long, value_enum, default_value_t = WorkloadChoice::Auto)]
    pub(super) workload: WorkloadChoice,
    /// Pass --allow-degraded to `governance run` (where BPF LSM programs do not load).
    #[arg(long)]
    pub(super) allow_degraded: bool,
    /// A label for the report's first line (none by default).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true
    )]
    pub(super) label: String,
    /// Skip the ring-buffer drain measurement.
    #[arg(long = "skip-drain", action = ArgAction::SetFalse)]
    pub(super) drain: bool,
    /// Skip the full pipeline measurement.
    #[arg(long = "skip-pipeline", action = ArgAction::SetFalse)]
    pub(super) pipeline: bool,
    /// Skip `governance audit verify` on the audit log after each pipeline run.
    #[arg(long = "no-verify", action = ArgAction::SetFalse)]
    pub(super) verify: bool,
}

/// --workload.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum WorkloadChoice {
    /// Denied opens where the file_open LSM program attaches, else denied connects.
    Auto,
    /// Denied TCP connects to a loopback port (cgroup/connect4).
    Connect,
    /// Denied opens of a file (lsm/file_open).
    Open,
}

/// "1.23M/s [1.10M-1.31M]"
pub(super) fn rate_cell(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{}/s [{}-{}]", ops(median(v)), ops(lo), ops(hi))
}

pub(super) fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}

pub(super) fn bench(opts: Opts) -> Res<()> {
    if !is_root() {
        return Err("needs root: it loads eBPF programs and creates a cgroup".into());
    }
    let env = Env::new(&opts)?;
    eprintln!(
        "bench: agent cgroup {}, flood: {}",
        env.cgroup.display(),
        env.workload.describe()
    );
    let drain = if opts.drain {
        Some(drain_bench(&env, opts.drain_rounds)?)
    } else {
        None
    };
    let mut runs: Vec<PipelineRun> = Vec::new();
    if opts.pipeline {
        let mut n = 0;
        for round in 1..=opts.rounds {
            for &p in &opts.producers {
                n += 1;
                let r = pipeline_run(&env, &opts, p, n)?;
                eprintln!(
                    "bench: pipeline round {round}/{} producers={p}: offered {}/s, through {}/s; \
                     decisions {} = recorded {} + dropped {}; audit {}; subscriber {} ({} decisions) + lost {} of {} published{}",
                    opts.rounds,
                    ops(r.offered()),
                    ops(r.rate()),
                    r.decisions,
                    r.recorded,
                    r.dropped,
                    r.in_audit,
                    r.sub_records,
                    r.sub_decisions,
                    r.sub_lost,
                    r.published,
                    if r.accounted() {
                        ""
                    } else {
                        "  ACCOUNTING MISMATCH"
                    }
                );
                if let Err(e) = &r.verify {
                    eprintln!("bench: audit verify failed: {e}");
                }
                runs.push(r);
            }
        }
    }
    let report = report(&opts, &env, drain.as_ref(), &runs);
    governance_bench::print_report(REPORT_BEGIN, &opts.label, &report);
    Ok(())
}

pub(super) fn report(
    opts: &Opts,
    env: &Env,
    drain: Option<&DrainResult>,
    runs: &[PipelineRun],
) -> Vec<String> {
    let mut r = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    r.push(format!(
        "kernel {}, LSMs {}, {cpus} CPUs; flood: {}",
        read_trim("/proc/sys/kernel/osrelease"),
        read_trim("/sys/kernel/security/lsm"),
        env.workload.describe()
    ));
    if let Workload::Connect(_) = env.workload {
        r.push(
            "  (denied connects, not opens: this kernel refuses LSM programs, so there is no file_open hook)"
                .into(),
        );
    }
    if let Some(d) = drain {
        r.push(format!(
            "1. ring buffer -> userspace, in process: the flood ({} attempts) fills the {} MiB ring \
             ({RING_EVENTS} records of {RECORD_BYTES} bytes) with nobody draining; then it is drained completely",
            d.fill,
            EVENTS_RING_BYTES >> 20
        ));
        for (decoded, what) in [
            (false, "raw: RingBuf::next + events::parse"),
            (true, "decoded: + Record::from_kernel, batched"),
        ] {
            let rates: Vec<f64> = d
                .rounds
                .iter()
                .filter(|x| x.decoded == decoded)
                .map(DrainRound::rate)
                .collect();
            let target = if decoded {
                String::new()
            } else {
                format!(
                    "  target >= {}/s: {}",
                    ops(DRAIN_TARGET),
                    verdict(median(&rates) >= DRAIN_TARGET)
                )
            };
            r.push(format!(
                "   {what:<42} {:<30} ({} rounds){target}",
                rate_cell(&rates),
                rates.len()
            ));
        }
        let held: Vec<f64> = d.rounds.iter().map(|x| x.events as f64).collect();
        // Decisions: the flood's, and the few the worker's own start makes (socket creation
        // under BPF LSM).
        let ok = d
            .rounds
            .iter()
            .all(|x| x.events + x.dropped == x.decisions && x.decisions >= d.fill);
        r.push(format!(
            "   the ring held {}-{} events per fill; drained + dropped (EventsDropped) == decisions (>= attempts) in every round: {}",
            min_max(&held).0,
            min_max(&held).1,
            if ok { "yes" } else { "NO" }
        ));
    }
    if !runs.is_empty() {
        r.push(format!(
            "2. full pipeline: `governance run --quiet --no-proxy` (drained, enriched, audit log with fsync per batch in {} ({}), metrics) \
             and one live subscriber (NDJSON from /v1/events?follow=true); producers flood for {} s each; {} rounds",
            env.tmp.parent().unwrap_or(Path::new("/")).display(),
            fs_type(&env.tmp),
            opts.secs,
            opts.rounds
        ));
        r.push(format!(
            "   {:<4} {:<24} {:<24} {:<13} {:<20} {:<12} {:<9} {}",
            "prod",
            "offered (decisions/s)",
            "through the pipeline",
            "peak backlog",
            "kernel drops",
            "sub lost",
            "daemon CPU",
            "accounted"
        ));
        for &p in &opts.producers {
            let of: Vec<&PipelineRun> = runs.iter().filter(|x| x.producers == p).collect();
            if of.is_empty() {
                continue;
            }
            let offered: Vec<f64> = of.iter().map(|x| x.offered()).collect();
            let through: Vec<f64> = of.iter().map(|x| x.rate()).collect();
            let drops: Vec<f64> = of.iter().map(|x| x.lost_share() * 100.0).collect();
            let lost: Vec<f64> = of.iter().map(|x| x.sub_lost as f64).collect();
            let cpu: Vec<f64> = of
                .iter()
                .map(|x| x.cpu_total().as_secs_f64() / x.through.as_secs_f64() * 100.0)
                .collect();
            let (dlo, dhi) = min_max(&drops);
            let (llo, lhi) = min_max(&lost);
            let backlog: Vec<f64> = of.iter().map(|x| x.peak_backlog as f64).collect();
            r.push(format!(
                "   {p:<4} {:<24} {:<24} {:<13} {:<20} {:<12} {:<9} {}/{}",
                rate_cell(&offered),
                rate_cell(&through),
                ops(median(&backlog)),
                format!("{:.1}% [{dlo:.1}-{dhi:.1}%]", median(&drops)),
                format!("{:.0} [{llo:.0}-{lhi:.0}]", median(&lost)),
                format!("{:.0}%", median(&cpu)),
                of.iter().filter(|x| x.accounted()).count(),
                of.len()
            ));
        }
        r.push(
            "   offered: kernel decisions / flood time; through: decision records written to the audit log and \
             received by the subscriber / time from the flood's start to the subscriber's last one"
                .into(),
        );
        r.push(format!(
            "   peak backlog: records queued in the pipeline (sampled every 100 ms); past {} the drainer pauses, the ring fills and the kernel drops",
            ops(governance::pipeline::MAX_BACKLOG as f64)
        ));
        r.push(
            "   accounted: decisions == recorded + kernel drops, audit lines == recorded, subscriber received + lost == published"
                .into(),
        );
        // Where the daemon's time goes, per event.
        r.push("   daemon CPU per recorded event, by thread (median over the runs):".into());
        for &p in &opts.producers {
            let of: Vec<&PipelineRun> = runs.iter().filter(|x| x.producers == p).collect();
            let mut names: Vec<String> = of.iter().flat_map(|x| x.cpu.keys().cloned()).collect();
            names.sort();
            names.dedup();
            let per_event =
                |x: &PipelineRun, d: Duration| d.as_secs_f64() * 1e9 / x.recorded.max(1) as f64;
            let cells: Vec<String> = names
                .iter()
                .filter_map(|n| {
                    let v: Vec<f64> = of
                        .iter()
                        .map(|x| per_event(x, x.cpu.get(n).copied().unwrap_or_default()))
                        .collect();
                    // The main thread and others that only wait.
                    (median(&v) >= 10.0).then(|| format!("{n} {:.0} ns", median(&v)))
                })
                .collect();
            let total: Vec<f64> = of.iter().map(|x| x.daemon_ns()).collect();
            r.push(format!(
                "     {p} producer(s): {}; all threads {:.0} ns",
                cells.join(", "),
                median(&total)
            ));
        }
        // What the producers cost, per decision: with the daemon on the same two cores, the
        // two share them, and the target is a budget for both. (A decision the ring had no room
        // for costs its producer less: no record is written.)
        r.push(
            "   producer CPU per decision (user and system: its connect or open, the kernel's programs, the ring buffer's wakeups), median over the runs:"
                .into(),
        );
        for &p in &opts.producers {
            let of: Vec<&PipelineRun> = runs.iter().filter(|x| x.producers == p).collect();
            let producer: Vec<f64> = of.iter().map(|x| x.producer_ns()).collect();
            let daemon: Vec<f64> = of.iter().map(|x| x.daemon_ns()).collect();
            let budget = 2e9 / PIPELINE_TARGET;
            let left = budget - median(&producer);
            let (lo, hi) = min_max(&producer);
            r.push(format!(
                "     {p} producer(s): {:.0} ns [{lo:.0}-{hi:.0}]; at {}/s two cores give {budget:.0} ns per event, {} for the daemon, which took {:.0} ns{}",
                median(&producer),
                ops(PIPELINE_TARGET),
                if left > 0.0 {
                    format!("{left:.0} ns left")
                } else {
                    "nothing left".into()
                },
                median(&daemon),
                if left > 0.0 {
                    format!(" ({:.1}x its budget)", median(&daemon) / left)
                } else {
                    String::new()
                }
            ));
        }
        let verified = runs
            .iter()
            .filter(|x| matches!(&x.verify, Ok(t) if t != "not run"))
            .count();
        let failed: Vec<&String> = runs
            .iter()
            .filter_map(|x| x.verify.as_ref().err())
            .collect();
        if opts.verify {
            r.push(format!(
                "   `governance audit verify` on every run's log: {verified} OK, {} failed{}",
                failed.len(),
                failed
                    .first()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ));
        }
        // What the daemon could sustain with both cores to itself (the producers' CPU
        // elsewhere): bounded by its total CPU per event over two cores, and by its busiest
        // thread on one.
        let capacity: Vec<f64> = runs
            .iter()
            .map(|x| {
                let total = x.cpu_total().as_secs_f64() / x.recorded.max(1) as f64;
                let busiest = x
                    .cpu
                    .values()
                    .max()
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64()
                    / x.recorded.max(1) as f64;
                (2.0 / total).min(1.0 / busiest)
            })
            .collect();
        r.push(format!(
            "   the daemon alone on 2 cores (from its CPU per event: 2 cores / all threads, capped by its busiest thread on one): {}",
            rate_cell(&capacity)
        ));
        // Targets.
        let one: Vec<&PipelineRun> = runs.iter().filter(|x| x.producers == 1).collect();
        if !one.is_empty() {
            let through: Vec<f64> = one.iter().map(|x| x.rate()).collect();
            let zero_loss = one.iter().all(|x| x.dropped == 0 && x.sub_lost == 0);
            // Keeping up: recorded as fast as decided (the backlog absorbs a burst; a pipeline
            // that does not keep up loses once it is full).
            let kept_up = one
                .iter()
                .filter(|x| x.rate() >= 0.95 * x.offered())
                .count();
            r.push(format!(
                "   1 producer (sharing the 2 cores with the daemon): zero loss in {}/{} runs, keeping up (through >= 95% of offered) in {kept_up}/{}; through {}  target >= {}/s: {}",
                one.iter()
                    .filter(|x| x.dropped == 0 && x.sub_lost == 0)
                    .count(),
                one.len(),
                one.len(),
                rate_cell(&through),
                ops(PIPELINE_TARGET),
                verdict(median(&through) >= PIPELINE_TARGET && zero_loss)
            ));
        }
        let best = opts
            .producers
            .iter()
            .map(|&p| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter(|x| x.producers == p)
                    .map(|x| x.rate())
                    .collect();
                (p, median(&v))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((p, rate)) = best {
            r.push(format!(
                "   most through the pipeline: {}/s (median, {p} producers)",
                ops(rate)
            ));
        }
        let all = runs.iter().filter(|x| x.accounted()).count();
        r.push(format!(
            "   every lost event counted: {all}/{} runs {}",
            runs.len(),
            if all == runs.len() { "PASS" } else { "MISS" }
        ));
    }
    r
}
