//! A daemon thread that runs until it is told to stop: the ring drainer, discovery.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context;

/// A named thread given a stop flag; [`Worker::stop`] (or drop) sets the flag and joins it.
pub(super) struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Start `run` on thread `name` (with the daemon's per-thread privileges); `what` names it
    /// in the error if it cannot start.
    pub fn start(
        name: &str,
        what: &'static str,
        run: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                crate::privilege::thread_started();
                run(flag)
            })
            .context(what)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
