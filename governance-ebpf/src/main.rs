//! governance's kernel side: decide, from BPF maps, whether a task in an agent cgroup may do
//! what it is about to do, and report every such decision through a ring buffer.
//!
//! Each program has the same shape: read the active generation, find the agent the current
//! task belongs to (a walk up its cgroup ancestry, or its sandbox profile), look the action up
//! in that agent's class tables, fall back to the class default, apply the verdict (allow,
//! block, throttle, sandbox, escalate), emit an event, return. Tasks outside every agent are not
//! touched and produce no event. The verdict never depends on whether the event could be
//! written: a full ring buffer only bumps a drop counter.
//!
//! One file per hook family, in the manner of Tetragon: `exec` (the exec hook and its degraded
//! tracepoint), `file` (opens), `net` (connect, sendmsg, sock_ops), `protect` (the built-in
//! protections), `guard` (built-ins against others acting for an agent, and against changing
//! what makes it one), `ipc` (System V IPC: only the agent's own objects), `keys` (keys and
//! keyrings: only the agent's own), `mqueue` (POSIX message queues: only the agent's own; their
//! makers, at `d_instantiate`), `unix` (Unix-socket
//! connects and datagrams), `caps` (capabilities agents never get), `creds` (the credentials
//! io_uring tasks of agents had, for `caps`), `mount` (mounts), `clone`
//! (a child in another cgroup or new namespaces), `mapping` (files mapped executable),
//! `identity` (file rules by the object's identity: the ancestor walk, hard links and renames),
//! `sigio` (the kernel's SIGIO and SIGURG from files agents armed),
//! `held` (a sandboxed process's sends on the sockets, and writes to the files, it held before its
//! sandbox verdict),
//! `lifecycle` (fork and exit), `sequence` (sequence rules: arming, and the connect-time
//! check) and `sequence_egress` (their per-packet check, for connections made before the
//! arming), `discover` (TLS server names and DNS queries of processes
//! outside every agent, for the daemon's discovery of unlabelled agents; never enforces).
//! What they share: `decide` (the agent, the decision, the event),
//! `maps` (every map) and `kernel` (struct offsets and constants).
//!
//! The loader finds programs, maps and offsets by symbol name (governance_common::programs,
//! ::maps, ::offsets): the macros export them unmangled, so which file holds one does not
//! matter, but renaming one does.
#![no_std]
#![no_main]
// An atomic add on a map value (`decide::count_marks`): the BPF target has no atomic types.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]
// Map keys are passed by reference on purpose: one stack slot, no copies for the verifier to track.
#![allow(clippy::needless_borrows_for_generic_args)]

mod caps;
mod clone;
mod creds;
mod decide;
mod discover;
mod exec;
mod file;
mod guard;
mod held;
mod identity;
mod ipc;
mod jobctl;
mod kernel;
mod keys;
mod lifecycle;
mod mapping;
mod maps;
mod mount;
mod mqueue;
mod net;
mod protect;
mod report;
mod route;
mod sequence;
mod sequence_egress;
mod sigio;
mod sock_create;
mod sockopt;
mod subvolume;
mod unix;

// On the host (clippy, cargo check) a dependency brings std and its panic handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
