//! The policy: YAML documents in a directory → validated, compiled rules.
//!
//! Every problem is reported with its file, line and column, and any problem rejects the whole
//! set: a typo never silently weakens a policy. The file format is in [`model`] (and
//! README); [`crate::engine`] decides with what this module produces.

pub mod cond;
pub mod glob;
pub mod kube;
pub mod model;
pub mod report;

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use marked_yaml::{Marker, Span, Spanned};
pub use model::{Access, Mode, Posture, Protocol, SandboxNetwork, ThrottleKey, Verdict};

use self::cond::Condition;

mod error;
mod items;
mod load;
mod sequence;
mod set;
mod validate;
mod values;

pub use self::kube::{PodIdentity, PodSelector};
use self::validate::*;
pub use self::{error::*, load::*, sequence::*, set::*, values::*};

/// Longest exec/file path a rule may name (what the kernel side can match and report).
pub const MAX_PATH_LEN: usize = governance_common::EVENT_PATH_LEN - 1;
/// Most rules a policy set may hold.
pub const MAX_RULES: usize = governance_common::MAX_EXEC_RULES as usize;

/// What kind of action a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Exec,
    File,
    Network,
    Http,
    Unix,
    /// A sequence rule (see [`Sequence`]): not a kind of action, and not in [`Kind::ALL`].
    Sequence,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Exec,
        Kind::File,
        Kind::Network,
        Kind::Http,
        Kind::Unix,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::File => "file",
            Kind::Network => "network",
            Kind::Http => "http",
            Kind::Unix => "unix",
            Kind::Sequence => "sequence",
        }
    }
}

#[cfg(test)]
mod tests;
