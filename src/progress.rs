//! What the writer thread and the callers share: durability progress (who waits for
//! what, and how it ended), the queue's budget, and the counters behind `Stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// Durability progress, budget and counters of one open database, shared by the writer thread and
/// every caller.
#[derive(Debug)]
pub(crate) struct Tracking {
    pub(crate) progress: Durability,
    pub(crate) budget: Budget,
    pub(crate) counters: Counters,
}

impl Tracking {
    /// The state at open: a file of `len` bytes holding `records` records, and a queue of
    /// at most `max_requests` requests or `max_bytes` bytes.
    pub(crate) fn new(max_requests: usize, max_bytes: usize, len: u64, records: u64) -> Self {
        let counters = Counters::default();
        counters.file_len.store(len, Ordering::Relaxed);
        counters.records_in_file.store(records, Ordering::Relaxed);
        Tracking {
            progress: Durability::default(),
            budget: Budget::new(max_requests, max_bytes),
            counters,
        }
    }
}

/// Durability progress, shared by the writer and every waiter.
///
/// This uses the standard library's condition variable on purpose: its `notify_all` wakes
/// every waiter at once, where `parking_lot`'s requeues them onto the mutex and wakes them
/// one after another, a chain of context switches that caps group commit with many
/// threads on few cores.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    state: std::sync::Mutex<ProgressState>,
    cv: std::sync::Condvar,
    /// Mirror of `state.durable`, so a waiter whose request is already durable returns
    /// without the mutex.
    durable: AtomicU64,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// Every request with a sequence number up to this one is durable.
    durable: u64,
    /// The first failure: requests from `.0` to `.1` were in the failed batch and get its
    /// error; later ones get [`Error::Poisoned`].
    failed: Option<(u64, u64, Arc<Error>)>,
    /// The writer has stopped.
    stopped: bool,
}

impl Durability {
    /// Blocks until request `seq` is durable, or fails.
    pub(crate) fn wait(&self, seq: u64) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let mut st = self.lock();
        loop {
            if st.durable >= seq {
                return Ok(());
            }
            if let Some((from, to, e)) = &st.failed {
                if seq >= *from {
                    return Err(if seq <= *to {
                        Error::clone(e)
                    } else {
                        Error::Poisoned {
                            cause: Arc::clone(e),
                        }
                    });
                }
            }
            if st.stopped {
                return Err(Error::Closed);
            }
            st = self
                .cv
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Every request up to this one is durable.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The failure that poisoned the database, if any.
    pub(crate) fn poisoned(&self) -> Option<Arc<Error>> {
        self.lock().failed.as_ref().map(|f| Arc::clone(&f.2))
    }

    /// Every request up to `seq` is durable.
    pub(crate) fn advance(&self, seq: u64) {
        let mut st = self.lock();
        st.durable = st.durable.max(seq);
        self.durable.store(st.durable, Ordering::Release);
        drop(st);
        self.cv.notify_all();
    }

    /// Records the failure that poisons the store (the first one wins), so that refused
    /// submissions name it, without failing any waiter yet: see [`Durability::fail`].
    pub(crate) fn record(&self, e: Error) {
        self.lock()
            .failed
            .get_or_insert((u64::MAX, u64::MAX, Arc::new(e)));
    }

    /// Fails every request that is not durable yet: those up to `to` (the failed batch)
    /// with the recorded error itself, later ones with [`Error::Poisoned`]. Called once
    /// memory is undone, so a caller that gets the error reads the durable state.
    pub(crate) fn fail(&self, to: u64) {
        let mut st = self.lock();
        let from = st.durable + 1;
        if let Some(f) = &mut st.failed {
            if f.0 == u64::MAX {
                (f.0, f.1) = (from, to);
            }
        }
        drop(st);
        self.cv.notify_all();
    }

    /// The writer has stopped: waiters whose request is not durable get
    /// [`Error::Closed`] (or the failure, if one was recorded).
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.cv.notify_all();
    }

    /// The writer died (`e` says how): every request that is not durable fails with `e`,
    /// or with the failure already recorded, and the writer counts as stopped.
    pub(crate) fn abort(&self, e: Error) {
        let mut st = self.lock();
        let from = st.durable + 1;
        match &mut st.failed {
            None => st.failed = Some((from, u64::MAX, Arc::new(e))),
            Some(f) if f.0 == u64::MAX => (f.0, f.1) = (from, u64::MAX),
            Some(_) => {}
        }
        st.stopped = true;
        drop(st);
        self.cv.notify_all();
    }
}

/// Bounds the bytes and requests in flight, so a caller faster than the disk is slowed
/// down instead of growing memory without limit. Every write takes its room here before
/// any lock of the map, and the channel behind it is unbounded, so no caller ever blocks
/// while it holds a lock of the map (a full channel did, and deadlocked against the
/// writer's poisoning).
#[derive(Debug)]
pub(crate) struct Budget {
    used: Mutex<Used>,
    cv: Condvar,
    max_requests: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Used {
    requests: usize,
    bytes: usize,
    /// The writer is gone: nothing will release room any more.
    closed: bool,
}

impl Budget {
    pub(crate) fn new(max_requests: usize, max_bytes: usize) -> Self {
        Budget {
            used: Mutex::new(Used::default()),
            cv: Condvar::new(),
            max_requests: max_requests.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Waits for room for one request of `bytes` (one larger than the cap waits until
    /// nothing else is in flight). Returns `false`, at once, once the writer is gone.
    pub(crate) fn acquire(&self, bytes: usize) -> bool {
        let mut u = self.used.lock();
        while !u.closed
            && u.requests > 0
            && (u.requests + 1 > self.max_requests || u.bytes + bytes > self.max_bytes)
        {
            self.cv.wait(&mut u);
        }
        if u.closed {
            return false;
        }
        u.requests += 1;
        u.bytes += bytes;
        true
    }

    /// Gives back the room of `requests` requests of `bytes` bytes in all.
    pub(crate) fn release(&self, requests: usize, bytes: usize) {
        let mut u = self.used.lock();
        u.requests = u.requests.saturating_sub(requests);
        u.bytes = u.bytes.saturating_sub(bytes);
        drop(u);
        self.cv.notify_all();
    }

    /// The writer is gone: every waiter and every later [`acquire`](Self::acquire) fails.
    pub(crate) fn close(&self) {
        self.used.lock().closed = true;
        self.cv.notify_all();
    }
}

/// Counters behind [`crate::Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) file_len: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) records_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) rebuilds: AtomicU64,
    /// Write requests (transactions) made durable by a batch.
    pub(crate) requests: AtomicU64,
    /// Records in the file now (live and dead), for the automatic rebuild.
    pub(crate) records_in_file: AtomicU64,
    /// The longest the last rebuild's copy held a lock of the map, in nanoseconds.
    pub(crate) rebuild_lock_ns: AtomicU64,
    /// How long the last rebuild's install kept the writer thread from writes, in
    /// nanoseconds.
    pub(crate) rebuild_install_ns: AtomicU64,
    /// Batches the writer held open for commits it expected (group commit).
    pub(crate) commit_waits: AtomicU64,
}

/// `d` in nanoseconds, saturated.
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Adds `n` to a counter.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_budget_fails_waiters_instead_of_blocking() {
        let b = Arc::new(Budget::new(1, 1 << 20));
        assert!(b.acquire(10));
        let b2 = Arc::clone(&b);
        let waiter = std::thread::spawn(move || b2.acquire(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
        b.close();
        assert!(!waiter.join().unwrap_or(true));
        assert!(!b.acquire(1));
    }

    #[test]
    fn abort_fails_every_waiter_that_is_not_durable() {
        let p = Durability::default();
        p.advance(3);
        p.abort(Error::internal("the writer thread panicked"));
        assert!(p.wait(3).is_ok());
        assert!(matches!(p.wait(4), Err(Error::Internal { .. })));
        assert!(matches!(p.wait(100), Err(Error::Internal { .. })));
    }

    #[test]
    fn abort_after_a_recorded_failure_fails_with_it() {
        let p = Durability::default();
        p.record(Error::Closed);
        p.abort(Error::internal("x"));
        assert!(matches!(p.wait(1), Err(Error::Closed)));
    }
}
