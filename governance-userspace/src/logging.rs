//! The daemon's and the CLI's diagnostics: the tracing subscriber (text or JSON), and
//! `say!`, the daemon's own log lines (`governance: ...` on stderr, or JSON events).

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether diagnostics are JSON (`--log-format json`).
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => {
            LOG_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
            fmt.json().with_ansi(false).init()
        }
    }
}

/// One line of the daemon's log: `governance: …` on stderr, or an info event with
/// `--log-format json`. Use [`say!`](crate::say).
pub fn say(message: std::fmt::Arguments<'_>) {
    say_all([message]);
}

/// Lines of the daemon's log ([`say`]) written together. In text, one write for all of them:
/// a long list (a policy's `NOT ENFORCED` lines, on every reload) costs one system call, where
/// `eprintln!` makes several per line. A log that cannot be written (stderr closed) loses the
/// lines, never the daemon.
pub fn say_all<T: std::fmt::Display>(lines: impl IntoIterator<Item = T>) {
    use std::{fmt::Write as _, io::Write as _};
    if log_json() {
        for line in lines {
            tracing::info!("{line}");
        }
        return;
    }
    let mut text = String::new();
    for line in lines {
        let _ = writeln!(text, "governance: {line}");
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub fn log_json() -> bool {
    LOG_JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// `say!("generation {n} is enforcing")`: a line of the daemon's log, see [`say`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::logging::say(format_args!($($arg)*)) };
}
