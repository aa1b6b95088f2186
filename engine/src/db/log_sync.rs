//! Background fdatasync of the logs for `Relaxed` writes.
//!
//! A relaxed write is acknowledged once its bytes are handed to the OS; the logs (the
//! write path's value log, then the WAL) must be synced often enough that a power loss
//! loses at most `Options::relaxed_sync_interval_bytes` of them. Syncing inline stops the
//! writer for the whole fdatasync. Instead, once half the interval is unsynced the commit
//! leader hands the current files to this thread and keeps writing; only if the whole
//! interval fills up before a sync completes does it sync inline (the old behaviour), so
//! the bound holds either way.
//!
//! Every request names a *mark* (bytes logged when it was made); a completed request
//! means every log byte up to the mark is durable, because each file is synced after all
//! bytes up to the mark were written to it and the value log is synced before the WAL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::fs::File;

/// Longest the thread sleeps between checks for shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// One file to fdatasync, named for errors.
pub(super) struct SyncFile {
    pub file: Arc<dyn File>,
    pub path: PathBuf,
    /// True for the value log (counted apart).
    pub vlog: bool,
}

/// A sync to run: files in order (value log first), and the mark they cover.
struct SyncJob {
    mark: u64,
    files: Vec<SyncFile>,
}

#[derive(Default)]
struct SyncerState {
    request: Option<SyncJob>,
    busy: bool,
    /// Highest mark a completed sync covers.
    synced: u64,
    /// The first failed fdatasync (the database must refuse writes).
    error: Option<String>,
    stop: bool,
}

/// The shared state of the background log syncer (see the module docs).
#[derive(Default)]
pub(super) struct LogSyncer {
    state: Mutex<SyncerState>,
    cv: Condvar,
}

impl LogSyncer {
    /// The highest mark known durable; an error if a background sync failed.
    pub fn synced(&self) -> Result<u64> {
        let st = self.state.lock();
        match &st.error {
            Some(e) => Err(Error::Background(format!(
                "a background log sync failed: {e}"
            ))),
            None => Ok(st.synced),
        }
    }

    /// Waits (at most `max`) until no sync is pending or running; returns the highest mark
    /// known durable then, or the error of a failed background sync.
    pub fn wait_idle(&self, max: Duration) -> Result<u64> {
        let deadline = std::time::Instant::now() + max;
        let mut st = self.state.lock();
        while (st.busy || st.request.is_some()) && st.error.is_none() && !st.stop {
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        drop(st);
        self.synced()
    }

    /// Asks for `files` to be synced up to `mark`, unless a sync is pending or running
    /// (the next request will cover more). Returns whether the request was taken.
    pub fn request(&self, mark: u64, files: impl FnOnce() -> Vec<SyncFile>) -> bool {
        let mut st = self.state.lock();
        if st.busy || st.request.is_some() || st.stop || mark <= st.synced {
            return false;
        }
        st.request = Some(SyncJob {
            mark,
            files: files(),
        });
        drop(st);
        self.cv.notify_all();
        true
    }

    /// Stops the thread after the sync it is running.
    pub fn stop(&self) {
        self.state.lock().stop = true;
        self.cv.notify_all();
    }

    /// The thread's loop: runs requests until [`LogSyncer::stop`], reporting the
    /// fdatasync calls of each (value log, WAL) to `on_synced`.
    pub fn run(&self, on_synced: impl Fn(u64, u64)) {
        let mut st = self.state.lock();
        loop {
            if st.stop {
                return;
            }
            let Some(job) = st.request.take() else {
                self.cv.wait_for(&mut st, IDLE_WAIT);
                continue;
            };
            if st.error.is_some() {
                continue;
            }
            st.busy = true;
            drop(st);
            let mut failed = None;
            let mut done = (0, 0);
            for f in &job.files {
                if let Err(e) = f.file.sync_data() {
                    failed = Some(format!("fdatasync {}: {e}", f.path.display()));
                    break;
                }
                if f.vlog {
                    done.0 += 1;
                } else {
                    done.1 += 1;
                }
            }
            on_synced(done.0, done.1);
            st = self.state.lock();
            st.busy = false;
            match failed {
                Some(e) => st.error = Some(e),
                None => st.synced = st.synced.max(job.mark),
            }
            self.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FaultFs, FaultRule, FileSystem, Op, OpenMode};
    use std::path::Path;

    fn file(fs: &FaultFs, name: &str) -> SyncFile {
        let path = Path::new("/d").join(name);
        let file = fs.open(&path, OpenMode::CreateNew).unwrap();
        file.write_all_at(b"abc", 0).unwrap();
        SyncFile {
            file,
            path,
            vlog: name.ends_with(".vlog"),
        }
    }

    fn wait_for(s: &LogSyncer, mark: u64) -> Result<u64> {
        for _ in 0..500 {
            let v = s.synced()?;
            if v >= mark {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        s.synced()
    }

    #[test]
    fn requests_advance_the_mark_and_count_syncs() {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let s = Arc::new(LogSyncer::default());
        let count = Arc::new(Mutex::new((0, 0)));
        let t = {
            let (s, count) = (s.clone(), count.clone());
            std::thread::spawn(move || {
                s.run(|v, w| {
                    let mut c = count.lock();
                    c.0 += v;
                    c.1 += w;
                })
            })
        };
        assert!(s.request(10, || vec![file(&fs, "1.vlog"), file(&fs, "wal")]));
        assert_eq!(s.wait_idle(Duration::from_secs(10)).unwrap(), 10);
        assert_eq!(wait_for(&s, 10).unwrap(), 10);
        assert_eq!(*count.lock(), (1, 1));
        // A mark already covered is not requested again.
        assert!(!s.request(5, Vec::new));
        s.stop();
        t.join().unwrap();
        assert!(
            !s.request(20, Vec::new),
            "a stopped syncer takes no requests"
        );
    }

    #[test]
    fn a_failed_sync_is_reported_and_sticky() {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let s = Arc::new(LogSyncer::default());
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.run(|_, _| {}))
        };
        let f = file(&fs, "wal");
        fs.add_rule(FaultRule::once(Op::Sync));
        assert!(s.request(7, || vec![f]));
        let mut res = Ok(0);
        for _ in 0..500 {
            res = s.synced();
            if res.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(res, Err(Error::Background(_))), "{res:?}");
        assert!(s.synced().is_err());
        s.stop();
        t.join().unwrap();
    }
}
