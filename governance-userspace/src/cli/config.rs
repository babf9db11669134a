//! The daemon's config file (`/etc/governance/config.yaml`, or `run --config PATH`): every flag
//! of `governance run` (and the global `--log`, `--log-format`) can be set there, under its
//! long name in snake_case (`--audit-max-bytes` is `audit_max_bytes`).
//!
//! The file only changes the defaults of the command line: each key becomes the default value
//! of its flag in clap's own definition, and the command line is parsed again with it. So a
//! flag given on the command line wins, then its environment variable (`GOVERNANCE_POLICY_DIR`
//! ...), then the file, then the built-in default; every value goes through the flag's own
//! parser, and a flag added to `RunArgs` is a key at once. Each value is checked here first, so
//! a bad one is reported with file:line:col like a policy problem. An unknown key is an error,
//! as is a missing file named by `--config` (or `GOVERNANCE_CONFIG`); a missing default file is
//! not: nothing is configured.
//!
//! A switch (`allow_degraded`) takes `true` or `false`; a repeatable flag (`proxy_host`) a list
//! or one value, and the command line's values replace the file's, they are not added.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{ArgAction, Command};
use marked_yaml::{Marker, Node};

use crate::policy::Problem;

/// Where `governance run` looks when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/governance/config.yaml";

/// Keys that are no flags of `run` (`config` itself: the file cannot name another).
const NOT_KEYS: &[&str] = &["help", "version", "config"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in the config file; nothing was started:\n{}", .0.len(), list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The config file's text: `explicit` (which must exist), else [`DEFAULT_PATH`] if it exists.
pub fn read(explicit: Option<&Path>) -> Result<Option<(PathBuf, String)>, ConfigError> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_PATH));
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some((path.to_owned(), text))),
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `cli` (the whole command line, as `Cli::command()` makes it) with the defaults of `run`'s
/// flags (and the global ones) taken from the config file `text`, read from `file`.
pub fn apply(cli: Command, file: &Path, text: &str) -> Result<Command, ConfigError> {
    let problem = |at: Option<Marker>, message: String| Problem {
        file: file.to_owned(),
        at: at.map(|m| (m.line(), m.column())),
        message,
    };
    // Only comments (the packaged example): nothing is set.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(cli);
    }
    let node = marked_yaml::parse_yaml_with_options(
        0,
        text,
        marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true),
    )
    .map_err(|e| {
        let (at, message) = crate::policy::yaml_error(&e);
        ConfigError::Invalid(vec![problem(at, message)])
    })?;
    let Node::Mapping(map) = node else {
        return Err(ConfigError::Invalid(vec![problem(
            node.span().start().copied(),
            "the config file is a mapping of flag names to values".into(),
        )]));
    };
    let Some(run) = cli.find_subcommand("run").cloned() else {
        return Ok(cli);
    };
    let keys = |cmd: &Command| -> Vec<(String, clap::Arg)> {
        cmd.get_arguments()
            .filter_map(|a| Some((a.get_long()?.replace('-', "_"), a.clone())))
            .filter(|(k, _)| !NOT_KEYS.contains(&k.as_str()))
            .collect()
    };
    let run_keys = keys(&run);
    let global_keys: Vec<_> = keys(&cli)
        .into_iter()
        .filter(|(_, a)| a.is_global_set())
        .collect();

    let mut problems = Vec::new();
    let mut defaults: Vec<(bool, clap::Id, Vec<String>)> = Vec::new();
    for (key, value) in map.iter() {
        let at = key.span().start().copied();
        let name = key.as_str();
        let found = run_keys
            .iter()
            .map(|k| (false, k))
            .chain(global_keys.iter().map(|k| (true, k)))
            .find(|(_, (k, _))| k == name);
        let Some((global, (_, arg))) = found else {
            let hint = if name.contains('-')
                && run_keys.iter().any(|(k, _)| *k == name.replace('-', "_"))
            {
                format!("; keys are snake_case: `{}`", name.replace('-', "_"))
            } else {
                let mut all: Vec<&str> = run_keys
                    .iter()
                    .chain(&global_keys)
                    .map(|(k, _)| k.as_str())
                    .collect();
                all.sort_unstable();
                format!("; the keys are: {}", all.join(", "))
            };
            problems.push(problem(at, format!("unknown key `{name}`{hint}")));
            continue;
        };
        let values = match values_of(arg, value) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err((at, message)) => {
                problems.push(problem(at, format!("{name}: {message}")));
                continue;
            }
        };
        // Through the flag's own parser first, so that a problem has its place here (clap
        // would only name the flag).
        if arg.get_action().takes_values() {
            let check = Command::new("config").no_binary_name(true).arg(
                clap::Arg::new("v")
                    .long("value")
                    .value_parser(arg.get_value_parser().clone())
                    .action(ArgAction::Append),
            );
            for v in &values {
                let mut flag = OsString::from("--value=");
                flag.push(v);
                if let Err(e) = check.clone().try_get_matches_from([flag]) {
                    let message = first_line(&e.to_string()).replace(" for '--value <v>'", "");
                    let at = value.span().start().copied().or(at);
                    problems.push(problem(at, format!("{name}: {message}")));
                }
            }
        }
        defaults.push((global, arg.get_id().clone(), values));
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let mut cli = cli;
    for (global, id, values) in defaults {
        let set = |a: clap::Arg| a.default_values(values.clone());
        cli = if global {
            cli.mut_arg(id, set)
        } else {
            cli.mut_subcommand("run", |run| run.mut_arg(id, set))
        };
    }
    Ok(cli)
}

/// The values `node` gives the flag `arg` as a default, as its command line would have them;
/// None: no value (`key:` or `key: null`), the flag keeps its default.
fn values_of(
    arg: &clap::Arg,
    node: &Node,
) -> Result<Option<Vec<String>>, (Option<Marker>, String)> {
    let at = node.span().start().copied();
    let scalar = |n: &Node| match n {
        Node::Scalar(s) => Ok(s.as_str().to_owned()),
        _ => Err((
            n.span().start().copied(),
            "expected a single value".to_owned(),
        )),
    };
    if let Node::Scalar(s) = node
        && s.may_coerce()
        && matches!(s.as_str(), "" | "~" | "null")
    {
        return Ok(None);
    }
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match node {
            Node::Scalar(s) => match s.as_bool() {
                Some(b) => Ok(Some(vec![b.to_string()])),
                None => Err((
                    at,
                    format!("expected true or false, found `{}`", s.as_str()),
                )),
            },
            _ => Err((at, "expected true or false".into())),
        },
        ArgAction::Append => match node {
            Node::Sequence(items) => items.iter().map(scalar).collect::<Result<_, _>>().map(Some),
            n => scalar(n).map(|v| Some(vec![v])),
        },
        _ => scalar(node).map(|v| Some(vec![v])),
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _};

    use super::*;
    use crate::cli::{Cli, Command as Sub};

    /// `governance run ARGS` with the config file `text`.
    fn run(text: &str, args: &[&str]) -> Result<crate::daemon::RunArgs, String> {
        let cmd =
            apply(Cli::command(), Path::new("/etc/g.yaml"), text).map_err(|e| e.to_string())?;
        let m = cmd
            .try_get_matches_from(["governance", "run"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match Cli::from_arg_matches(&m)
            .map_err(|e| e.to_string())?
            .command
        {
            Sub::Run(a) => Ok(*a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_file_sets_defaults_and_flags_win() {
        let text = "\
# the node's settings
policy: /srv/policies
allow_degraded: true
audit_max_bytes: 1M
audit_on_failure: block
proxy_host: [a=127.0.0.1, b=::1]
api_listen: 127.0.0.1:7777
api_token_file: /etc/governance/token
upstream_ca:
";
        let a = run(text, &[]).unwrap();
        assert_eq!(a.policy, Path::new("/srv/policies"));
        assert!(a.allow_degraded);
        assert_eq!(a.audit_max_bytes, 1 << 20);
        assert_eq!(a.audit_on_failure, crate::audit::OnFailure::Block);
        assert_eq!(a.proxy_hosts, ["a=127.0.0.1", "b=::1"]);
        assert_eq!(a.api_listen, Some("127.0.0.1:7777".parse().unwrap()));
        assert_eq!(a.upstream_ca, None);
        // Untouched keys keep their built-in defaults.
        assert_eq!(a.audit_dir, Path::new("/var/lib/governance/audit"));

        let a = run(
            text,
            &[
                "--policy",
                "/p",
                "--audit-max-bytes",
                "2M",
                "--proxy-host",
                "c=127.0.0.2",
            ],
        )
        .unwrap();
        assert_eq!(a.policy, Path::new("/p"));
        assert_eq!(a.audit_max_bytes, 2 << 20);
        assert_eq!(a.proxy_hosts, ["c=127.0.0.2"]);
        // A flag the file sets to `true` is still set (a switch cannot be turned off by a
        // flag; say `false` in the file for that).
        assert!(a.allow_degraded);
        assert!(!run("allow_degraded: false\n", &[]).unwrap().allow_degraded);
        // Only comments, or nothing: nothing is set.
        assert!(
            !run("# allow_degraded: true\n\n", &[])
                .unwrap()
                .allow_degraded
        );
        assert!(!run("", &[]).unwrap().allow_degraded);
    }

    #[test]
    fn problems_name_the_place() {
        let e = run("policy: /p\naudit-dir: /a\n", &[]).unwrap_err();
        assert!(
            e.contains(
                "/etc/g.yaml:2:1: unknown key `audit-dir`; keys are snake_case: `audit_dir`"
            ),
            "{e}"
        );
        let e = run("polcy: /p\n", &[]).unwrap_err();
        assert!(
            e.contains("/etc/g.yaml:1:1: unknown key `polcy`; the keys are: "),
            "{e}"
        );
        assert!(
            e.contains("allow_degraded, ") && e.contains("log_format"),
            "{e}"
        );
        let e = run(
            "quiet: 1\naudit_max_bytes: lots\naudit_on_failure: maybe\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("3 problem(s)"), "{e}");
        assert!(
            e.contains("/etc/g.yaml:1:8: quiet: expected true or false, found `1`"),
            "{e}"
        );
        assert!(
            e.contains("/etc/g.yaml:2:18: audit_max_bytes: invalid value 'lots': bad size"),
            "{e}"
        );
        assert!(
            e.contains("/etc/g.yaml:3:19: audit_on_failure: invalid value 'maybe'"),
            "{e}"
        );
        // Whichever place gives the token file, --api-listen is checked by the daemon.
        let a = run("api_token_file: /t\n", &["--api-listen", "127.0.0.1:1"]).unwrap();
        assert_eq!(a.api_token_file.as_deref(), Some(Path::new("/t")));
        let e = run("policy: [a, b]\n", &[]).unwrap_err();
        assert!(
            e.contains("/etc/g.yaml:1:9: policy: expected a single value"),
            "{e}"
        );
        let e = run("- policy\n", &[]).unwrap_err();
        assert!(e.contains("/etc/g.yaml:1:1: "), "{e}");
        let e = run("policy: /a\npolicy: /b\n", &[]).unwrap_err();
        assert!(e.contains("/etc/g.yaml:2:1: YAML: "), "{e}");
        let e = run("config: /other.yaml\n", &[]).unwrap_err();
        assert!(e.contains("unknown key `config`"), "{e}");
    }

    #[test]
    fn global_flags_can_be_set_too() {
        let cmd = apply(
            Cli::command(),
            Path::new("/c"),
            "log: debug\nlog_format: json\n",
        )
        .unwrap();
        let cli = Cli::from_arg_matches(&cmd.get_matches_from(["governance", "run"])).unwrap();
        assert_eq!(cli.log, "debug");
        assert_eq!(cli.log_format, crate::cli::LogFormat::Json);
    }

    #[test]
    fn a_missing_file_is_fine_only_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("config.yaml");
        let e = read(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        std::fs::write(&missing, "quiet: true\n").unwrap();
        let (path, text) = read(Some(&missing)).unwrap().unwrap();
        assert_eq!((path, text.as_str()), (missing, "quiet: true\n"));
    }

    /// The commented lines of `text` from the first that starts with `start`, uncommented.
    fn uncommented(text: &str, start: &str) -> String {
        let from = text.find(start).unwrap();
        text[from..]
            .lines()
            .filter_map(|l| l.strip_prefix("# ").or(l.strip_prefix("#")))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_packaged_examples_are_valid_once_uncommented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
        let config = std::fs::read_to_string(root.join("config.yaml")).unwrap();
        // As installed: all comments, nothing set.
        assert!(!run(&config, &[]).unwrap().allow_degraded);
        // Every `# key: value` line, uncommented, is a valid setting.
        let settings: String = config
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(": ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(settings.lines().count() >= 20, "{settings}");
        let a = run(&settings, &[]).unwrap();
        assert_eq!(a.proxy_hosts, ["internal.example=10.0.0.5"]);

        let policy = root.join("policies/example.yaml");
        let text = std::fs::read_to_string(&policy).unwrap();
        // As installed: no policy, nothing governed.
        assert!(
            crate::policy::parse(&[(policy.clone(), text.clone())])
                .unwrap()
                .policies
                .is_empty()
        );
        let set = crate::policy::parse(&[(policy, uncommented(&text, "# name:"))]).unwrap();
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.rule_count(), 2);
    }
}
