//! The summary of `cargo xtask test`: libtest's counts added up per place, the red team's and
//! the differential test's lines, and how long each step took.

use super::*;

/// libtest's summary numbers, added up.
#[derive(Default, Debug, Clone, Copy)]
pub(super) struct Counts {
    pub(super) passed: u32,
    pub(super) failed: u32,
    pub(super) ignored: u32,
    /// Red-team cases tried, denied as expected, and their controls allowed (lines the kernel
    /// tests print: `redteam: tried|denied|control <case>`).
    pub(super) tried: u32,
    pub(super) denied: u32,
    pub(super) controls: u32,
    /// Cases of the HTTP compatibility suite, which runs them all in one test and prints a
    /// line per case (`compat: ok ...`, `compat: FAILED ...`).
    pub(super) cases_passed: u32,
    pub(super) cases_failed: u32,
    /// The HTTP differential test's line (`differential: N variants, M refused or decided as
    /// canonical, F acted on differently ...`, from the unit tests): how many were seen, and
    /// their numbers added up.
    pub(super) differential_runs: u32,
    pub(super) variants: u32,
    pub(super) variants_as_canonical: u32,
    pub(super) variants_differ: u32,
}

impl Counts {
    pub(super) fn add_line(&mut self, line: &str) {
        if let Some(at) = line.find("compat: ") {
            match line[at..].split_whitespace().nth(1) {
                Some("ok") => self.cases_passed += 1,
                Some("FAILED") => self.cases_failed += 1,
                _ => {}
            }
        }
        // libtest may print `test name ... ` or progress dots on the same line first.
        if let Some(at) = line.find("differential: ")
            && let Some((n, same, differ)) = differential(&line[at + "differential: ".len()..])
        {
            self.differential_runs += 1;
            self.variants += n;
            self.variants_as_canonical += same;
            self.variants_differ += differ;
        }
        if let Some(at) = line.find("redteam: ") {
            match line[at..].split_whitespace().nth(1) {
                Some("tried") => self.tried += 1,
                Some("denied") => self.denied += 1,
                Some("control") => self.controls += 1,
                _ => {}
            }
        }
        // "test result: ok. 18 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; ..."
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// `N variants, M refused or decided as canonical, F acted on differently ...` → (N, M, F).
pub(super) fn differential(rest: &str) -> Option<(u32, u32, u32)> {
    let words: Vec<&str> = rest.split_whitespace().take(12).collect();
    match words.as_slice() {
        [
            n,
            "variants,",
            same,
            "refused",
            "or",
            "decided",
            "as",
            "canonical,",
            differ,
            "acted",
            "on",
            last,
        ] if last.starts_with("differently") => {
            Some((n.parse().ok()?, same.parse().ok()?, differ.parse().ok()?))
        }
        _ => None,
    }
}

impl Counts {
    /// The summary's line for the HTTP differential test, and whether it passed: it must have
    /// run (printed its line), on some variants, and none acted on differently.
    pub(super) fn differential_summary(&self) -> (bool, String) {
        if self.differential_runs == 0 {
            return (
                false,
                "HTTP differential test: did not run (no `differential:` line in the unit tests' output)   <- FAILED".into(),
            );
        }
        let ok = self.variants > 0 && self.variants_differ == 0;
        let mut line = format!(
            "HTTP differential test: {} variants of the example policies' rules; {} refused or decided as the upstream frameworks act on them",
            self.variants, self.variants_as_canonical
        );
        if self.variants_differ > 0 {
            line += &format!("; {} acted on differently", self.variants_differ);
        }
        if !ok {
            line += "   <- FAILED";
        }
        (ok, line)
    }

    /// The suite's cases in place of libtest's tests, when it printed any (its one test
    /// stands for them all; if it failed before a case ran, that failure is what counts).
    pub(super) fn as_cases(self) -> Counts {
        if self.cases_passed + self.cases_failed == 0 {
            return self;
        }
        Counts {
            passed: self.cases_passed,
            failed: self.cases_failed,
            ignored: 0,
            ..self
        }
    }
}

/// Run a cargo test command, echoing its output as it comes and counting its results.
pub(super) fn counted(args: &[&str], env: &[(&str, &Path)]) -> Result<(bool, Counts)> {
    let mut cmd = Command::new("cargo");
    cmd.args(args).stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting cargo {}", args.join(" ")))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut out = std::io::stdout();
    let mut counts = Counts::default();
    // Echoed as it is read, not line by line: libtest's progress dots and `test name ... `
    // come before their newline.
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading cargo test's output"),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            counts.add_line(String::from_utf8_lossy(&line).trim_end());
        }
    }
    if !pending.is_empty() {
        counts.add_line(String::from_utf8_lossy(&pending).trim_end());
    }
    Ok((child.wait()?.success(), counts))
}

/// How long each step of `cargo xtask test` took, for the end of its report.
#[derive(Default)]
pub(super) struct Steps(pub(super) Vec<(&'static str, Duration)>);

impl Steps {
    pub(super) fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.0.push((name, started.elapsed()));
        out
    }
}
