//! What this binary is: its version, the commit it was built from and the eBPF object embedded
//! in it. `governance version` and `--version` print it, the control API's status carries it
//! (`version`), and `/metrics` has it as `governance_build_info{version,commit,ebpf} 1`.

use serde::{Deserialize, Serialize};

/// The crate's semver.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit of the sources, 12 hex digits (`unknown` for a build outside git; see
/// build.rs).
pub const COMMIT: &str = env!("GOVERNANCE_GIT_COMMIT");
/// The first 12 hex digits of the SHA-256 of the embedded eBPF object.
pub const EBPF: &str = env!("GOVERNANCE_EBPF");
/// What `governance --version` prints after the name: `0.1.0 (commit …, ebpf …)`, as
/// [`Version`]'s Display.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GOVERNANCE_GIT_COMMIT"),
    ", ebpf ",
    env!("GOVERNANCE_EBPF"),
    ")"
);

/// The build, as the API and the metrics give it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Version {
    /// The semver (`0.1.0`).
    pub version: String,
    /// The git commit, 12 hex digits, or `unknown`.
    pub commit: String,
    /// The first 12 hex digits of the SHA-256 of the embedded eBPF object.
    pub ebpf: String,
}

impl Version {
    /// This binary's.
    pub fn this() -> Self {
        Self {
            version: VERSION.to_owned(),
            commit: COMMIT.to_owned(),
            ebpf: EBPF.to_owned(),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (commit {}, ebpf {})",
            self.version, self.commit, self.ebpf
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    #[test]
    fn the_ebpf_hash_is_that_of_the_embedded_object() {
        let digest: String = Sha256::digest(crate::kernel::EBPF_OBJECT)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, env!("GOVERNANCE_EBPF_SHA256"));
        let v = Version::this();
        assert_eq!(v.ebpf.len(), 12);
        assert!(digest.starts_with(&v.ebpf));
        assert_eq!(v.to_string(), LONG);
        assert_eq!(v.version, env!("CARGO_PKG_VERSION"));
        // A commit, or `unknown` for a build outside git.
        assert!(
            v.commit == "unknown"
                || (v.commit.len() == 12 && v.commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{v}"
        );
    }
}
