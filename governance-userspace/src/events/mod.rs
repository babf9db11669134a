//! Decision events: the one event model every part of governance reports in.
//!
//! Kernel decisions (exec, file, network, self-protection), HTTP decisions of the proxy,
//! approvals, policy reloads and the daemon's lifecycle are all a [`Record`]: one documented
//! schema (`governance events schema` prints it as JSON Schema; `docs/event.schema.json` is the
//! committed copy), written to the audit log, streamed to subscribers as NDJSON, and printed as
//! one readable line ([`Record`]'s `Display`).
//!
//! The kernel side: a ring-buffer record ([`parse`]) is decoded with the names of the
//! generation that decided it ([`Names`]) into a [`Record`] ([`Record::from_kernel`]).
//!
//! - [`record`]: the [`Record`] and its parts, record ids, the [`Sink`] records go to;
//! - [`kernel`]: ring-buffer records → [`Record`]s, and the grants kernel escalations ask for;
//! - [`display`]: the readable line;
//! - [`filter`]: what a subscriber selects, and a live stream's own records;
//! - [`json`]: a record as JSON, written directly for the pipeline (the bytes `serde_json` writes);
//! - [`time`]: the kernel's clock, RFC 3339.

pub mod display;
pub mod filter;
pub mod json;
pub mod kernel;
pub mod record;
pub mod sequence;
pub mod time;

pub use filter::{Filter, StreamInfo};
pub use kernel::{Names, RuleName, parse, requested_grant};
pub use record::{
    AgentInfo, ApprovalInfo, CgroupInfo, Ids, Object, ProcessInfo, Record, RecordType, Shadow,
    Sink, Source, node_name,
};
pub use time::{Clock, monotonic_ns, parse_rfc3339, rfc3339};

#[cfg(test)]
mod tests;
