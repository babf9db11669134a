//! A child process we started, seen through its stderr: a thread reads the lines into a log of
//! (arrival time, line), which callers wait on with a deadline; and the child is stopped by
//! SIGTERM, then SIGKILL after a grace period. The daemon harness ([`crate::Daemon`]) and the
//! benchmarks' peer (Tetragon) both run on it.

use std::{
    io::BufRead as _,
    process::Child,
    sync::{Arc, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// The lines a child printed on stderr, each with when it arrived.
pub struct StderrLog {
    /// What the messages call the child ("the daemon", "tetragon").
    who: &'static str,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<JoinHandle<()>>,
}

impl StderrLog {
    /// Take `child`'s piped stderr and read it on a thread until it closes.
    pub fn follow(who: &'static str, child: &mut Child) -> Result<StderrLog, String> {
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| format!("{who}'s stderr is not piped"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    lock(&lines).push((Instant::now(), line));
                }
            })
        };
        Ok(StderrLog {
            who,
            lines,
            reader: Some(reader),
        })
    }

    /// Every line so far. Hold it briefly: the reader waits on it.
    pub fn lines(&self) -> MutexGuard<'_, Vec<(Instant, String)>> {
        lock(&self.lines)
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The first line from number `from` on that contains `text`: its number and when it
    /// arrived. Waits up to `timeout` while `child` runs, and says why it stopped waiting.
    pub fn wait_line(
        &self,
        child: &Child,
        from: usize,
        text: &str,
        timeout: Duration,
    ) -> Result<(usize, Instant), String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let lines = self.lines();
                if let Some(i) = lines.iter().skip(from).position(|(_, l)| l.contains(text)) {
                    return Ok((from + i, lines[from + i].0));
                }
            }
            let exited = !running(child);
            if Instant::now() > deadline || (exited && self.finished()) {
                let why = if exited { "it exited" } else { "timed out" };
                return Err(format!(
                    "{} did not print {text:?} within {timeout:?} ({why}); its stderr:\n  {}",
                    self.who,
                    self.tail(30).join("\n  ")
                ));
            }
            // Poll interval: a line's arrival time is stamped by the reader, not here.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the reader has seen the end of stderr.
    fn finished(&self) -> bool {
        self.reader.as_ref().is_none_or(|r| r.is_finished())
    }

    /// Wait for the reader to read the last line (after the child exited).
    pub fn join(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// SIGTERM to `child` (ours, by its pid) if it still runs, wait up to `grace` for it to
    /// exit, SIGKILL it after that; then reap it and read its last lines.
    pub fn stop(&mut self, child: &mut Child, grace: Duration) {
        if running(child) {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while running(child) && Instant::now() < deadline {
                // Poll interval; the deadline above bounds the wait for its exit.
                std::thread::sleep(Duration::from_millis(10));
            }
            if running(child) {
                eprintln!("{} ignored SIGTERM for {grace:?}; killing it", self.who);
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        self.join();
    }
}

/// Whether our child `child` has not exited. `try_wait` needs `&mut`; the pid is ours and not
/// yet reaped, so /proc tells (a zombie has exited).
fn running(child: &Child) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", child.id())).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
