//! When a burst of changes to the policy directory is over, so the reload reads whole files.
//!
//! The daemon reloads [`QUIET`] after the last change, unless a file of the directory is still
//! being written: created or modified and not closed yet (inotify's `IN_CREATE`/`IN_MODIFY`
//! without the `IN_CLOSE_WRITE`). A half-written file is never read on purpose: YAML cut at a
//! line end can parse as a smaller policy (rules missing), so the reload waits for the close,
//! however long, and says so after [`NOTE_AFTER`] (SIGHUP or `governance policy reload` reloads at
//! once). What the watch cannot follow waits [`WINDOW`] after the burst's first change instead:
//! a directory created in place (the files written into it before it is watched are not seen)
//! and a lost inotify queue (which forgets the files open for writing: their closes may be
//! lost with it). A rename into the directory publishes what it moves whole (the
//! kubelet's `..data` swap, `mv` of a file or directory written elsewhere), so it ends that
//! doubt.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use tokio::time::Instant;

/// Quiet after the last change before the reload: the steps of one tool's update (an editor's
/// rename, create, write and close; `cp` or `git` writing several files; the kubelet's swap)
/// follow each other within it.
pub(super) const QUIET: Duration = Duration::from_millis(10);

/// After the first change, when the watch could not follow all of it.
pub(super) const WINDOW: Duration = Duration::from_millis(300);

/// A file open for writing this long is named in the log (once per burst).
pub(super) const NOTE_AFTER: Duration = Duration::from_secs(10);

/// One change the policy directory's watch reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// A file created by its writer or written (`IN_CREATE` of a regular file with one name,
    /// `IN_MODIFY`): not whole until it is closed.
    Writing(PathBuf),
    /// A file closed after writing.
    Closed(PathBuf),
    /// A name removed or moved away.
    Gone(PathBuf),
    /// A name moved in.
    MovedIn(PathBuf),
    /// A directory created in place: what is written into it is not seen.
    Unsure,
    /// The watch's queue overflowed: closes may be lost with the rest, so nothing is known to
    /// be open for writing any more.
    Lost,
    /// Anything else: a symlink or a hard link made (whole as made).
    Other,
}

/// The burst of changes in progress (none between bursts).
#[derive(Debug, Default)]
pub(super) struct Burst {
    first: Option<Instant>,
    last: Option<Instant>,
    writing: BTreeSet<PathBuf>,
    unsure: bool,
    noted: bool,
}

/// What a due time means when it comes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// The burst is over: reload.
    Reload,
    /// These files are still open for writing (said once).
    Waiting(Vec<PathBuf>),
}

impl Burst {
    /// Take the changes of one read of the watch, made at `now`.
    pub fn note(&mut self, changes: impl IntoIterator<Item = Change>, now: Instant) {
        for c in changes {
            match c {
                Change::Writing(p) => {
                    self.writing.insert(p);
                }
                Change::Closed(p) | Change::Gone(p) => {
                    self.writing.remove(&p);
                }
                Change::MovedIn(p) => {
                    self.writing.remove(&p);
                    self.unsure = false;
                }
                Change::Unsure => self.unsure = true,
                Change::Lost => {
                    self.writing.clear();
                    self.unsure = true;
                }
                Change::Other => {}
            }
            self.first.get_or_insert(now);
            self.last = Some(now);
        }
    }

    /// When to look again ([`fire`](Self::fire)); `None` between bursts, and while a write
    /// still open has been said.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        if !self.writing.is_empty() {
            return (!self.noted).then(|| last + NOTE_AFTER);
        }
        let quiet = last + QUIET;
        Some(if self.unsure {
            quiet.max(first + WINDOW)
        } else {
            quiet
        })
    }

    /// The due time came.
    pub fn fire(&mut self) -> Due {
        if self.writing.is_empty() {
            self.reloaded();
            Due::Reload
        } else {
            self.noted = true;
            Due::Waiting(self.writing.iter().cloned().collect())
        }
    }

    /// Whether the directory is as its writers left it: no burst in progress and no file open
    /// for writing (a reload for another reason may read it then).
    pub fn settled(&self) -> bool {
        self.first.is_none() && self.writing.is_empty()
    }

    /// A reload read the directory (for this burst or another reason): the burst is over,
    /// except for the files still open for writing, whose close starts the next one.
    pub fn reloaded(&mut self) {
        *self = Self {
            writing: std::mem::take(&mut self.writing),
            ..Self::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn a_file_moved_in_is_reloaded_after_the_quiet() {
        let t = Instant::now();
        let mut b = Burst::default();
        assert_eq!(b.due(), None);
        b.note([Change::MovedIn(p("/p/a.yaml"))], t);
        assert_eq!(b.due(), Some(t + QUIET));
        assert_eq!(b.fire(), Due::Reload);
        assert_eq!(b.due(), None, "the burst is over");
    }

    #[test]
    fn each_change_moves_the_reload_to_the_quiet_after_it() {
        let t = Instant::now();
        let mut b = Burst::default();
        b.note([Change::MovedIn(p("/p/a.yaml"))], t);
        let later = t + Duration::from_millis(7);
        b.note([Change::MovedIn(p("/p/b.yaml"))], later);
        assert_eq!(b.due(), Some(later + QUIET));
    }

    #[test]
    fn a_file_being_written_holds_the_reload_until_it_is_closed() {
        let t = Instant::now();
        let mut b = Burst::default();
        b.note([Change::Writing(p("/p/a.yaml"))], t);
        assert_eq!(b.due(), Some(t + NOTE_AFTER), "only the note is due");
        // Another file done meanwhile does not release it.
        b.note(
            [
                Change::Writing(p("/p/b.yaml")),
                Change::Closed(p("/p/b.yaml")),
            ],
            t,
        );
        assert_eq!(b.due(), Some(t + NOTE_AFTER));
        assert_eq!(b.fire(), Due::Waiting(vec![p("/p/a.yaml")]));
        assert_eq!(b.due(), None, "said once; the close is what comes next");
        let closed = t + NOTE_AFTER + Duration::from_secs(5);
        b.note([Change::Closed(p("/p/a.yaml"))], closed);
        assert_eq!(b.due(), Some(closed + QUIET));
        assert_eq!(b.fire(), Due::Reload);
    }

    #[test]
    fn a_written_file_removed_or_renamed_away_holds_nothing() {
        let t = Instant::now();
        let mut b = Burst::default();
        // An editor's temporary file, written and then renamed over the policy.
        b.note(
            [
                Change::Writing(p("/p/.a.yaml.swp")),
                Change::Gone(p("/p/.a.yaml.swp")),
                Change::MovedIn(p("/p/a.yaml")),
            ],
            t,
        );
        assert_eq!(b.due(), Some(t + QUIET));
        let mut b = Burst::default();
        b.note([Change::Writing(p("/p/x")), Change::Gone(p("/p/x"))], t);
        assert_eq!(b.due(), Some(t + QUIET));
    }

    #[test]
    fn a_directory_made_in_place_waits_the_window_unless_a_rename_publishes_it() {
        let t = Instant::now();
        let mut b = Burst::default();
        b.note([Change::Unsure], t);
        assert_eq!(b.due(), Some(t + WINDOW));
        // Changes after the window's end still wait their quiet.
        let late = t + WINDOW;
        b.note([Change::Other], late);
        assert_eq!(b.due(), Some(late + QUIET));

        // The kubelet's update: a new directory, a symlink to it, renamed over `..data`.
        let mut b = Burst::default();
        b.note([Change::Unsure, Change::Other], t);
        b.note(
            [
                Change::Gone(p("/p/..data_tmp")),
                Change::MovedIn(p("/p/..data")),
            ],
            t + Duration::from_millis(1),
        );
        assert_eq!(b.due(), Some(t + Duration::from_millis(1) + QUIET));
    }

    #[test]
    fn a_lost_queue_forgets_the_writes_and_waits_the_window() {
        let t = Instant::now();
        let mut b = Burst::default();
        b.note([Change::Writing(p("/p/a.yaml"))], t);
        // The close may be among the lost events: the reload must not wait for it.
        b.note([Change::Lost], t + Duration::from_millis(1));
        assert_eq!(b.due(), Some(t + WINDOW));
        assert_eq!(b.fire(), Due::Reload);
    }

    #[test]
    fn the_directory_is_settled_only_between_bursts_with_no_file_open() {
        let t = Instant::now();
        let mut b = Burst::default();
        assert!(b.settled());
        b.note([Change::MovedIn(p("/p/a.yaml"))], t);
        assert!(!b.settled(), "changes not yet quiet");
        assert_eq!(b.fire(), Due::Reload);
        assert!(b.settled());
        b.note([Change::Writing(p("/p/a.yaml"))], t);
        b.reloaded();
        assert!(!b.settled(), "a file still open for writing");
        b.note([Change::Closed(p("/p/a.yaml"))], t);
        assert!(!b.settled(), "its close starts a burst");
        assert_eq!(b.fire(), Due::Reload);
        assert!(b.settled());
    }

    #[test]
    fn a_reload_for_another_reason_keeps_the_files_still_being_written() {
        let t = Instant::now();
        let mut b = Burst::default();
        b.note(
            [
                Change::Writing(p("/p/a.yaml")),
                Change::MovedIn(p("/p/b.yaml")),
            ],
            t,
        );
        b.reloaded();
        assert_eq!(b.due(), None);
        let closed = t + Duration::from_secs(1);
        b.note([Change::Closed(p("/p/a.yaml"))], closed);
        assert_eq!(
            b.due(),
            Some(closed + QUIET),
            "the close starts the next burst"
        );
    }
}
