//! The LLM provider hosts a process outside every agent is a candidate for talking to: the
//! defaults, or a file (`run --discover-hosts FILE`, one pattern a line, `#` comments). A
//! pattern is a host name, where a leading `*.` stands for one or more labels and any other `*`
//! label for exactly one (`bedrock-runtime.*.amazonaws.com`).

use std::path::Path;

/// The providers' API hosts known when this was written.
pub const DEFAULT_HOSTS: &[&str] = &[
    "api.openai.com",
    "*.openai.azure.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "*-aiplatform.googleapis.com",
    "aiplatform.googleapis.com",
    "api.mistral.ai",
    "api.cohere.ai",
    "api.cohere.com",
    "api.groq.com",
    "openrouter.ai",
    "api.together.xyz",
    "api.together.ai",
    "api.fireworks.ai",
    "api.deepseek.com",
    "api.perplexity.ai",
    "api.x.ai",
    "inference.ai.azure.com",
    "*.services.ai.azure.com",
    "bedrock-runtime.*.amazonaws.com",
    "bedrock-runtime-fips.*.amazonaws.com",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "api.replicate.com",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    patterns: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("reading the discovery host list {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: `{pattern}` is not a host pattern (letters, digits, `-`, `_`, dots, `*` labels)"
    )]
    Pattern {
        path: std::path::PathBuf,
        line: usize,
        pattern: String,
    },
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts {
            patterns: DEFAULT_HOSTS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

impl Hosts {
    /// The list in `path`.
    pub fn load(path: &Path) -> Result<Self, HostsError> {
        let text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut patterns = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let p = line
                .split('#')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if p.is_empty() {
                continue;
            }
            let valid = p.split('.').all(|l| {
                l == "*"
                    || (!l.is_empty()
                        && l.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'*')))
            });
            if !valid {
                return Err(HostsError::Pattern {
                    path: path.to_owned(),
                    line: i + 1,
                    pattern: p,
                });
            }
            patterns.push(p);
        }
        Ok(Hosts { patterns })
    }

    /// The pattern `host` matches, if any.
    pub fn matches(&self, host: &str) -> Option<&str> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.patterns
            .iter()
            .find(|p| pattern_matches(p, &host))
            .map(String::as_str)
    }
}

fn pattern_matches(pattern: &str, host: &str) -> bool {
    if let Some(rest) = pattern.strip_prefix("*.") {
        // One or more labels, then the rest.
        return host
            .match_indices('.')
            .any(|(i, _)| i > 0 && labels_match(rest, &host[i + 1..]));
    }
    labels_match(pattern, host)
}

/// Label by label; a `*` label is any one label, a label with `*` in it (`*-aiplatform`) is a
/// glob within the label.
fn labels_match(pattern: &str, host: &str) -> bool {
    let (p, h): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), host.split('.').collect());
    p.len() == h.len()
        && p.iter().zip(&h).all(|(p, h)| {
            !h.is_empty()
                && match p.split_once('*') {
                    None => p == h,
                    Some((pre, post)) => {
                        h.len() > pre.len() + post.len() && h.starts_with(pre) && h.ends_with(post)
                    }
                }
        })
}
