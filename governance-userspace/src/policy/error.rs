//! Problems found in a policy set, each with its file, line and column.

use super::*;

/// Where something was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Shared by every location in the file (one path per file, not per rule).
    pub file: Arc<Path>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem found in the policy set, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading policy directory {dir}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no policy files (*.yaml, *.yml) in {0}")]
    Empty(PathBuf),
    /// A link in the policy directory to a file or directory outside it: agents' writes there
    /// are not refused (the built-in protections cover the policy directory), so an agent
    /// could write its own policy (red team round 24).
    #[error(
        "{path} is a link to {target}, outside the policy directory {dir}: agents may write there, so it is not read (copy it into {dir}, or point --policy at it)"
    )]
    Outside {
        path: PathBuf,
        target: String,
        dir: PathBuf,
    },
    #[error("{} problem(s) in the policy; nothing was applied:\n{}", .0.len(), list(.0))]
    Invalid(Vec<Problem>),
}

pub(super) fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
