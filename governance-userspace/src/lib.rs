//! governance: kernel-level enforcement for AI agents.
//!
//! The data flows one way through these modules:
//!
//! - policy YAML → [`policy`] (validated rules) → [`agents`] (which cgroups are agents) →
//!   [`kernel`] (eBPF programs, compiled map contents) and [`engine`] (the HTTP decisions);
//! - kernel ring buffer and [`proxy`] decisions and [`approvals`] → [`events`] (one record
//!   model) → [`pipeline`] (enrich, [`audit`] log, [`metrics`], subscribers) → [`api`] (the
//!   control API: live stream, status, approvals) → [`client`] and [`cli`] (the command line);
//!   [`ocsf`] shapes records for SIEMs; [`export`] sends them to syslog, webhooks and OTLP
//!   collectors, and notifies people of escalations; [`report`] makes compliance reports from
//!   the audit log.
//!
//! [`daemon`] wires it together for `governance run`.

pub mod agents;
pub mod api;
pub mod approvals;
pub mod audit;
pub mod capabilities;
pub mod cli;
pub mod client;
pub mod counts;
pub mod daemon;
pub mod discovery;
pub mod drill;
pub mod durable;
pub mod engine;
pub mod events;
pub mod export;
pub mod kernel;
pub mod kubernetes;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod ocsf;
pub mod peer;
pub mod pipeline;
pub mod policy;
pub mod privilege;
pub mod procfs;
pub mod proxy;
pub mod report;
pub mod version;
