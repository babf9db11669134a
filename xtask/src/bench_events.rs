//! `cargo xtask bench events`: decision events per second, from the kernel's ring buffer into
//! the daemon, and through the daemon's whole pipeline (drained, enriched, audit log with an
//! fsync per batch, metrics, one live subscriber), with what is lost beyond that and whether it
//! is counted (bench/src/bin/events/main.rs). On the host the flood is denied connects (the host
//! refuses LSM programs); in the VM (BPF LSM, software emulation, about ten times slower) it is
//! denied opens. Run by the host/VM runner of bench_kernel.rs.

use std::time::Duration;

use crate::bench_kernel::RootBench;

pub const EVENTS: RootBench = RootBench {
    bin: "governance-bench-events",
    title: "event throughput benchmark",
    report_begin: "==> event throughput",
    host_args: &["--rounds", "5", "--secs", "3", "--allow-degraded"],
    host_label: "host kernel, cgroup socket hooks (no BPF LSM programs: denied connects)",
    vm_args: &["--rounds", "3", "--secs", "2", "--drain-rounds", "5"],
    vm_label: "VM: Debian 6.1 kernel with BPF LSM, qemu (2 vCPUs, software emulation)",
    vm_timeout: Duration::from_secs(900),
};
