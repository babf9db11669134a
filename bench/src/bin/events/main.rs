//! `cargo xtask bench events`: how many decision events per second get from the kernel to the
//! audit log and a live subscriber, and what happens to the ones that do not.
//!
//! A flood of denied actions from an agent cgroup: denied opens of a file that a `file` rule
//! blocks where BPF LSM works, denied TCP connects to a loopback port that a `network` rule
//! blocks where it does not (the development hosts refuse LSM programs, and load the cgroup
//! socket hooks). Each denial is one decision event. Two measurements:
//!
//! 1. **Ring-buffer drain** (the kernel → daemon boundary), in this process: load the programs
//!    with `Enforcer::start` under a pin directory of our own, install a one-agent policy, take
//!    the event ring, and with nobody draining let a flood fill it (it holds
//!    `EVENTS_RING_BYTES / record size` events; the rest are dropped and counted by the kernel's
//!    EventsDropped counter). Then time draining it completely: raw (`RingBuf::next` +
//!    `events::parse`) and decoded (+ `Record::from_kernel`, into a batch as the daemon's
//!    drainer does), in alternate rounds. Checked each round: drained + dropped == decisions.
//! 2. **Full pipeline**: a real `governance run` (`--quiet --no-proxy`, audit log on disk with an
//!    fsync per batch, metrics), one live subscriber reading the NDJSON stream of the control
//!    socket (`GET /v1/events?follow=true`, what `governance events --follow -o json` reads),
//!    and 1, 2, 4 producer processes in the agent cgroup, each flooding for a fixed time. From
//!    the daemon's `/v1/status` (kernel decisions, EventsDropped) and `/metrics` (records
//!    published, written to the audit log, lost by subscribers), the subscriber's own counts,
//!    and the audit files themselves: the rate at which events were recorded, whether every
//!    event was recorded, and, where not, whether every lost one was counted:
//!    decisions == recorded + kernel drops, and subscriber received + subscriber lost == records
//!    published. The daemon's CPU time per thread says where the time goes.
//!
//! Rounds interleave the producer counts; the report gives medians and ranges.
//!
//! Needs root. Usage:
//!   governance-bench-events [--governance PATH] [--rounds N] [--drain-rounds N] [--secs S]
//!                           [--producers 1,2,4] [--workload auto|connect|open]
//!                           [--allow-degraded] [--label TEXT] [--skip-drain] [--skip-pipeline]
//! The governance binary is --governance, else $GOVERNANCE_BIN.

use std::{
    collections::BTreeMap,
    hint::black_box,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use clap::{ArgAction, Parser, ValueEnum};
use governance::{
    agents,
    events::{self, Clock, Record},
    kernel::{self, Enforcer, HookState},
    policy,
};
use governance_bench::{
    Daemon, Res, Worker, cgroup2_mount, ctx, is_root, median, min_max, ops, positive, read_trim,
    remove_cgroup, wait_for_go,
};
use governance_common::{Counter, EVENTS_RING_BYTES, Event};

mod drain;
mod env;
mod pipeline;
mod report;
mod worker;

use self::{drain::*, env::*, pipeline::*, report::*, worker::*};

/// Marks the report's lines, so that `cargo xtask bench events` can print it again at the end.
const REPORT_BEGIN: &str = "==> event throughput";

/// Targets: the ring drain's from the first issue, the whole pipeline's from issue 17 (recorded
/// decisions per second, the producer on the same 2 cores).
const DRAIN_TARGET: f64 = 1e6;
const PIPELINE_TARGET: f64 = 500e3;

/// A ring-buffer record: the event and the ring's 8-byte header, rounded up to 8 bytes.
const RECORD_BYTES: usize = (std::mem::size_of::<Event>() + 8).div_ceil(8) * 8;
/// Events the ring holds.
const RING_EVENTS: usize = EVENTS_RING_BYTES as usize / RECORD_BYTES;

/// After a flood, counters must stay still this long before they are read (the daemon reports
/// kernel drops once a second, as a record of their own).
const SETTLE: Duration = Duration::from_millis(1300);

#[derive(Clone, Debug)]
enum Workload {
    /// Denied TCP connects to this address (cgroup/connect4).
    Connect(SocketAddr),
    /// Denied opens of this file (lsm/file_open).
    Open(PathBuf),
}

impl Workload {
    fn describe(&self) -> String {
        match self {
            Workload::Connect(a) => format!("denied TCP connects to {a} (cgroup/connect4)"),
            Workload::Open(p) => format!("denied opens of {} (lsm/file_open)", p.display()),
        }
    }

    fn rule(&self) -> String {
        match self {
            Workload::Connect(a) => format!(
                "network: {{ cidr: {}/32, ports: {}, protocol: tcp }}",
                a.ip(),
                a.port()
            ),
            Workload::Open(p) => format!("file: {{ path: {} }}", p.display()),
        }
    }

    fn args(&self) -> [String; 2] {
        match self {
            Workload::Connect(a) => ["connect".into(), a.to_string()],
            Workload::Open(p) => ["open".into(), p.display().to_string()],
        }
    }
}

fn main() {
    governance_bench::run_main("governance-bench-events", worker, bench);
}
