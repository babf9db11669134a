//! governance: kernel-level enforcement for AI agents.
//!
//! The data flows one way through these modules:
//! policy YAML → [`policy`] → [`agents`] (which cgroups are agents) → [`kernel`] (eBPF programs
//! and maps) → decision events from the ring buffer → [`events`] → the CLI's output ([`cli`]).

pub mod agents;
pub mod approvals;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod kernel;
pub mod policy;
pub mod proxy;
