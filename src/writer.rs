//! The writer thread: requests, the batching loop (group commit), acknowledgements,
//! automatic and explicit rebuilds, and shutdown.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::codec;
use crate::error::{Error, Result};
use crate::fs::{Fs, FsFile};
use crate::storage::{self, BackupWriter, Hasher, Paths};

/// What undoes one request's changes to the map, kept until the request is durable.
pub(crate) type Undo = Box<dyn Any + Send>;

/// One message to the writer thread.
pub(crate) enum Request {
    /// Append `data` (whole record lines of one transaction) as part of a batch.
    Write {
        seq: u64,
        data: Vec<u8>,
        records: u64,
        undo: Undo,
    },
    /// Rebuild the file now and report how it went.
    Compact(Sender<Result<()>>),
    /// Make everything before this durable, end the session cleanly, report, and stop.
    Shutdown(Sender<Result<()>>),
}

/// The typed side of the database, as the writer sees it.
pub(crate) trait Engine: Send + Sync {
    /// Serializes every live pair, in chunks of whole lines, one shard at a time under
    /// that shard's read lock. Returns the last sequence number the copy may include.
    fn snapshot(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64>;
    /// Refuses every later submission.
    fn refuse_writes(&self);
    /// Undoes `undos` (oldest first in the vector), newest first, so that memory matches
    /// the disk again.
    fn undo(&self, undos: Vec<Undo>);
    /// Live keys.
    fn live_keys(&self) -> u64;
}

/// Durability progress, shared by the writer and every waiter.
///
/// This uses the standard library's condition variable on purpose: its `notify_all` wakes
/// every waiter at once, where `parking_lot`'s requeues them onto the mutex and wakes them
/// one after another, a chain of context switches that caps group commit with many
/// threads on few cores.
#[derive(Debug, Default)]
pub(crate) struct Progress {
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

impl Progress {
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
                        e.duplicate()
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

    fn advance(&self, seq: u64) {
        let mut st = self.lock();
        st.durable = st.durable.max(seq);
        self.durable.store(st.durable, Ordering::Release);
        drop(st);
        self.cv.notify_all();
    }

    /// Records the failure that poisons the store (the first one wins), so that refused
    /// submissions name it, without failing any waiter yet: see [`Progress::fail`].
    fn record(&self, e: Error) {
        self.lock()
            .failed
            .get_or_insert((u64::MAX, u64::MAX, Arc::new(e)));
    }

    /// Fails every request that is not durable yet: those up to `to` (the failed batch)
    /// with the recorded error itself, later ones with [`Error::Poisoned`]. Called once
    /// memory is undone, so a caller that gets the error reads the durable state.
    fn fail(&self, to: u64) {
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

    fn stop(&self) {
        self.lock().stopped = true;
        self.cv.notify_all();
    }
}

/// Bounds the bytes and requests in flight, so a caller faster than the disk is slowed
/// down instead of growing memory without limit. Taken before the map's write lock, so a
/// full queue never blocks readers.
#[derive(Debug)]
pub(crate) struct Budget {
    used: Mutex<(usize, usize)>,
    cv: Condvar,
    max_requests: usize,
    max_bytes: usize,
}

impl Budget {
    pub(crate) fn new(max_requests: usize, max_bytes: usize) -> Self {
        Budget {
            used: Mutex::new((0, 0)),
            cv: Condvar::new(),
            max_requests: max_requests.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Waits for room for one request of `bytes` (one larger than the cap waits until
    /// nothing else is in flight).
    pub(crate) fn acquire(&self, bytes: usize) {
        let mut u = self.used.lock();
        while u.0 > 0 && (u.0 + 1 > self.max_requests || u.1 + bytes > self.max_bytes) {
            self.cv.wait(&mut u);
        }
        u.0 += 1;
        u.1 += bytes;
    }

    pub(crate) fn release(&self, requests: usize, bytes: usize) {
        let mut u = self.used.lock();
        u.0 -= requests;
        u.1 -= bytes;
        drop(u);
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
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Tunables the writer needs.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    pub(crate) batch_bytes: usize,
    pub(crate) compact_ratio: f64,
    pub(crate) compact_floor: u64,
    pub(crate) preallocate: bool,
}

/// The state owned by the writer thread.
pub(crate) struct Writer {
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) paths: Paths,
    pub(crate) file: Box<dyn FsFile>,
    pub(crate) len: u64,
    /// Length of `P` including preallocated zeros after `len`.
    pub(crate) allocated: u64,
    pub(crate) hasher: Hasher,
    pub(crate) rx: Receiver<Request>,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) budget: Arc<Budget>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) config: WriterConfig,
    /// Control requests met while a rebuild gathered writes; handled before the queue.
    pub(crate) deferred: VecDeque<Request>,
    /// The number of the last write taken from the queue.
    pub(crate) taken: u64,
    /// The rebuild in progress, if any.
    pub(crate) job: Option<RebuildJob>,
    pub(crate) poisoned: bool,
    /// A shutdown was taken from the queue while failing it.
    pub(crate) stop: bool,
}

struct Pending {
    seq: u64,
    bytes: usize,
    undo: Undo,
}

/// A rebuild whose copy runs on its own thread.
pub(crate) struct RebuildJob {
    done: Receiver<Result<Copied>>,
    thread: JoinHandle<()>,
    replies: Vec<Sender<Result<()>>>,
    /// Every write taken from the queue since the copy began: its lines and records.
    tail: Vec<(Vec<u8>, u64)>,
}

/// Tells every caller of `compact` waiting on a rebuild how it ended.
fn reply_all(replies: &[Sender<Result<()>>], r: &Result<()>) {
    for reply in replies {
        let _ = reply.send(match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e.duplicate()),
        });
    }
}

/// What the rebuild thread hands back: the backup with the copy in it (synced), the last
/// write number the copy may include, and its records.
pub(crate) struct Copied {
    backup: BackupWriter,
    through: u64,
    records: u64,
}

/// The rebuild thread's work: steps R1–R3.
fn copy_map(fs: Arc<dyn Fs>, paths: Paths, engine: &dyn Engine) -> Result<Copied> {
    let mut backup = BackupWriter::create(fs, paths)?;
    let mut records = 0u64;
    let through = engine.snapshot(&mut |chunk| {
        records += crate::load::count_lines(chunk);
        backup.write(chunk)
    })?;
    backup.sync()?;
    Ok(Copied {
        backup,
        through,
        records,
    })
}

impl Writer {
    /// Starts the thread `ptvp35-writer`.
    pub(crate) fn spawn(self) -> Result<JoinHandle<()>> {
        let path = self.paths.main.clone();
        std::thread::Builder::new()
            .name("ptvp35-writer".into())
            .spawn(move || self.run())
            .map_err(|e| Error::io("spawn writer thread for", &path, e))
    }

    fn run(mut self) {
        let mut buf = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            let first = if self.deferred.is_empty() {
                if let Some(job) = &self.job {
                    crossbeam_channel::select! {
                        recv(self.rx) -> r => match r {
                            Ok(r) => r,
                            Err(_) => break,
                        },
                        recv(job.done) -> copied => {
                            let copied = copied.unwrap_or(Err(Error::Closed));
                            self.finish_rebuild(copied);
                            // A failed install poisons, which may take a shutdown from
                            // the queue: stop then, or `close` waits forever.
                            if self.stop {
                                break;
                            }
                            continue;
                        }
                    }
                } else {
                    let Some(r) = self.next(true) else { break };
                    r
                }
            } else {
                let Some(r) = self.next(false) else { break };
                r
            };
            let mut control = None;
            let mut records = 0;
            let mut next = Some(first);
            // Take one request, then drain what is queued, up to the byte cap; a control
            // request ends the batch so that it sees everything queued before it.
            while let Some(req) = next.take() {
                match req {
                    Request::Write {
                        seq,
                        data,
                        records: n,
                        undo,
                    } => {
                        let bytes = data.len();
                        if let Some(job) = &mut self.job {
                            job.tail.push((data.clone(), n));
                        }
                        if buf.is_empty() {
                            // A large transaction is written from its own buffer, uncopied.
                            buf = data;
                        } else {
                            buf.extend_from_slice(&data);
                        }
                        records += n;
                        self.taken = seq;
                        pending.push(Pending { seq, bytes, undo });
                    }
                    other => {
                        control = Some(other);
                        break;
                    }
                }
                if buf.len() < self.config.batch_bytes {
                    next = self.next(false);
                }
            }
            if !pending.is_empty() {
                if self.poisoned {
                    // Only reachable for requests sent before the refusal took effect.
                    let failed: Vec<Pending> = std::mem::take(&mut pending);
                    let (n, bytes) = (failed.len(), failed.iter().map(|p| p.bytes).sum());
                    self.engine
                        .undo(failed.into_iter().map(|p| p.undo).collect());
                    self.budget.release(n, bytes);
                    buf.clear();
                } else {
                    self.write_batch(&mut buf, &mut pending, records, control.is_none());
                }
            }
            match control {
                Some(Request::Compact(reply)) => self.start_rebuild(Some(reply)),
                Some(Request::Shutdown(reply)) => {
                    self.abandon_rebuild();
                    let r = if self.poisoned {
                        // The session's flags stay; the next open recovers from them.
                        Err(self.poisoned_error())
                    } else {
                        self.trim_preallocation()
                            .and_then(|()| storage::end_session(&*self.fs, &self.paths))
                    };
                    let _ = reply.send(r);
                    break;
                }
                // An automatic rebuild was considered in `write_batch`.
                _ => {}
            }
            if self.stop {
                break;
            }
        }
        self.progress.stop();
    }

    /// Writes and syncs one batch, then acknowledges (or fails) every request in it. With
    /// `may_compact`, it first considers an automatic rebuild.
    fn write_batch(
        &mut self,
        buf: &mut Vec<u8>,
        pending: &mut Vec<Pending>,
        records: u64,
        may_compact: bool,
    ) {
        let last = pending.last().map_or(0, |p| p.seq);
        let bytes: usize = pending.iter().map(|p| p.bytes).sum();
        let n = pending.len();
        let result = if buf.is_empty() {
            Ok(())
        } else {
            self.append(buf, records, n as u64)
        };
        buf.clear();
        if buf.capacity() > 2 * self.config.batch_bytes.max(1 << 20) {
            // Do not keep a huge transaction's buffer around.
            *buf = Vec::new();
        }
        match result {
            Ok(()) => {
                pending.clear();
                // Decide before waking the waiters: what they submit next must not change
                // the decision (the crash exploration relies on a reproducible schedule).
                if may_compact {
                    self.maybe_compact();
                }
                self.progress.advance(last);
            }
            Err(e) => {
                self.cut_failed_tail();
                let failed: Vec<Pending> = std::mem::take(pending);
                self.poison(failed, last, e);
            }
        }
        self.budget.release(n, bytes);
    }

    /// After a failed write or sync: the disk's state is unknown, so refuse further writes
    /// (no retry-and-trust), fail every waiter whose request is not durable (those up to
    /// `last` with `e`), and undo in memory what did not reach the disk, including
    /// everything still queued.
    fn poison(&mut self, failed: Vec<Pending>, last: u64, e: Error) {
        self.poisoned = true;
        self.progress.record(e);
        self.engine.refuse_writes();
        let mut undos: Vec<Undo> = failed.into_iter().map(|p| p.undo).collect();
        let (mut drained, mut drained_bytes) = (0, 0);
        while let Ok(req) = self.rx.try_recv() {
            match req {
                Request::Write { data, undo, .. } => {
                    drained += 1;
                    drained_bytes += data.len();
                    undos.push(undo);
                }
                Request::Compact(reply) => {
                    let _ = reply.send(Err(self.poisoned_error()));
                }
                Request::Shutdown(reply) => {
                    let _ = reply.send(Err(self.poisoned_error()));
                    self.stop = true;
                }
            }
        }
        self.engine.undo(undos);
        self.progress.fail(last);
        self.budget.release(drained, drained_bytes);
    }

    /// After a failed append: best effort, cut `P` back to its durable length and sync.
    /// A failed `fdatasync` may leave the batch in the page cache marked clean (D6): a
    /// reopen in this process would read it whole, checksum and all, and append after
    /// it, while the disk may hold a hole there that later makes recovery cut those
    /// acknowledged appends. The cut drops the cached pages; if it fails too, the next
    /// open still sees what the cache holds (`docs/recovery.md`, "Faults while running").
    fn cut_failed_tail(&mut self) {
        if self.file.set_len(self.len).is_ok() && self.file.sync_data().is_ok() {
            self.allocated = self.len;
        }
    }

    fn poisoned_error(&self) -> Error {
        match self.progress.poisoned() {
            Some(cause) => Error::Poisoned { cause },
            None => Error::Closed,
        }
    }

    fn append(&mut self, buf: &mut Vec<u8>, records: u64, requests: u64) -> Result<()> {
        codec::close_batch(buf, &mut self.hasher.0);
        let end = self.len + buf.len() as u64;
        if self.config.preallocate && end > self.allocated {
            self.preallocate(end)?;
        }
        let path = &self.paths.main;
        storage::io("write", path, self.file.write_at(self.len, buf))?;
        storage::io("fsync", path, self.file.sync_data())?;
        self.len += buf.len() as u64;
        let c = &self.counters;
        c.file_len.store(self.len, Ordering::Relaxed);
        bump(&c.batches, 1);
        bump(&c.syncs, 1);
        bump(&c.records_written, records);
        bump(&c.records_in_file, records);
        bump(&c.requests, requests);
        bump(&c.bytes_written, buf.len() as u64);
        Ok(())
    }

    /// Extends `P` with zeros well past `end`, so that the next batches overwrite
    /// allocated blocks and their syncs need not update the file's size. The zeros are
    /// made durable by the batch's own sync; recovery cuts them (they never validate) and
    /// a clean close trims them.
    fn preallocate(&mut self, end: u64) -> Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let chunk = (self.len / 8).clamp(256 << 10, 64 << 20);
        let target = (end + chunk).next_multiple_of(4096);
        // The batch itself fills up to `end`; only what lies beyond needs zeros.
        let mut at = self.allocated.max(end);
        while at < target {
            let n = usize::try_from(target - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
            storage::io(
                "preallocate",
                &self.paths.main,
                self.file.write_at(at, &ZEROS[..n]),
            )?;
            at += n as u64;
        }
        self.allocated = target;
        Ok(())
    }

    /// Cuts the preallocated zeros before a clean close (the flag that excuses them is
    /// about to go). `fdatasync` makes a size change durable.
    fn trim_preallocation(&mut self) -> Result<()> {
        if self.allocated > self.len {
            let path = &self.paths.main;
            storage::io("truncate", path, self.file.set_len(self.len))?;
            storage::io("fsync", path, self.file.sync_data())?;
            self.allocated = self.len;
        }
        Ok(())
    }

    fn maybe_compact(&mut self) {
        if self.poisoned || self.job.is_some() || self.len < self.config.compact_floor {
            return;
        }
        let live = self.engine.live_keys().max(1);
        let in_file = self.counters.records_in_file.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)] // a ratio of counts; precision is irrelevant
        let grown = in_file as f64 > self.config.compact_ratio * live as f64;
        if grown {
            self.start_rebuild(None);
        }
    }

    /// The next request: a deferred one first, then the queue (waiting if `block`).
    fn next(&mut self, block: bool) -> Option<Request> {
        if let Some(r) = self.deferred.pop_front() {
            return Some(r);
        }
        if block {
            self.rx.recv().ok()
        } else {
            self.rx.try_recv().ok()
        }
    }

    /// Starts a rebuild on the thread `ptvp35-rebuild` (steps R1–R3): it copies the map
    /// into `P.backup` one shard at a time while this thread goes on appending to `P`.
    /// `reply`, if any, learns how the rebuild ended.
    fn start_rebuild(&mut self, reply: Option<Sender<Result<()>>>) {
        if let Some(job) = &mut self.job {
            job.replies.extend(reply);
            return;
        }
        if self.poisoned {
            if let Some(r) = reply {
                let _ = r.send(Err(self.poisoned_error()));
            }
            return;
        }
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let (fs, paths, engine) = (
            Arc::clone(&self.fs),
            self.paths.clone(),
            Arc::clone(&self.engine),
        );
        let spawned = std::thread::Builder::new()
            .name("ptvp35-rebuild".into())
            .spawn(move || {
                let _ = done_tx.send(copy_map(fs, paths, &*engine));
            });
        match spawned {
            Ok(thread) => {
                self.job = Some(RebuildJob {
                    done,
                    thread,
                    replies: reply.into_iter().collect(),
                    tail: Vec::new(),
                });
            }
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::io(
                        "spawn rebuild thread for",
                        &self.paths.main,
                        e,
                    )));
                }
            }
        }
    }

    /// Finishes the rebuild whose copy is done (steps R3–R9, a few syncs on this thread).
    ///
    /// The copy took one shard at a time, so it may hold part of a transaction applied
    /// meanwhile. Every write this thread took from the queue since the copy began is
    /// therefore appended to the backup again (replaying a write over a copy that already
    /// holds it is harmless), and so is every write still queued up to the last number the
    /// copy could have seen: the backup then holds exactly the state after that write.
    fn finish_rebuild(&mut self, copied: Result<Copied>) {
        let Some(RebuildJob {
            thread,
            replies,
            tail,
            ..
        }) = self.job.take()
        else {
            return;
        };
        let _ = thread.join();
        let copied = match copied {
            Ok(c) if !self.poisoned => c,
            Ok(c) => {
                let _ = c.backup.discard();
                reply_all(&replies, &Err(self.poisoned_error()));
                return;
            }
            Err(e) => {
                // Nothing vouches for the backup yet: `P` is intact, nothing is poisoned.
                let _ = storage::remove_if_exists(&*self.fs, &self.paths.backup);
                reply_all(&replies, &Err(e));
                return;
            }
        };
        let mut replayed = Vec::new();
        let r = self.install(copied, tail, &mut replayed);
        let (n, bytes) = (replayed.len(), replayed.iter().map(|p| p.bytes).sum());
        match &r {
            Ok(through) => self.progress.advance(*through),
            Err(e) => {
                let last = replayed.last().map_or(0, |p| p.seq);
                self.poison(replayed, last, e.duplicate());
            }
        }
        self.budget.release(n, bytes);
        reply_all(&replies, &r.map(drop));
    }

    fn install(
        &mut self,
        copied: Copied,
        tail: Vec<(Vec<u8>, u64)>,
        replayed: &mut Vec<Pending>,
    ) -> Result<u64> {
        let Copied {
            mut backup,
            through,
            mut records,
        } = copied;
        for (data, n) in tail {
            backup.write(&data)?;
            records += n;
        }
        while self.taken < through {
            // Every write up to `through` is queued already: this never waits for long.
            match self.rx.recv() {
                Ok(Request::Write {
                    seq,
                    data,
                    records: n,
                    undo,
                }) => {
                    backup.write(&data)?;
                    records += n;
                    self.taken = seq;
                    replayed.push(Pending {
                        seq,
                        bytes: data.len(),
                        undo,
                    });
                }
                Ok(other) => self.deferred.push_back(other),
                Err(_) => break,
            }
        }
        let (file, len, hasher) = backup.install()?;
        self.file = file;
        self.len = len;
        self.allocated = len;
        self.hasher = hasher;
        let c = &self.counters;
        c.file_len.store(len, Ordering::Relaxed);
        c.records_in_file.store(records, Ordering::Relaxed);
        bump(&c.rebuilds, 1);
        bump(&c.syncs, 2);
        bump(&c.requests, replayed.len() as u64);
        Ok(through)
    }

    /// At shutdown: waits for a running copy and throws it away.
    fn abandon_rebuild(&mut self) {
        if let Some(job) = self.job.take() {
            if let Ok(Ok(c)) = job.done.recv() {
                let _ = c.backup.discard();
            } else {
                let _ = storage::remove_if_exists(&*self.fs, &self.paths.backup);
            }
            let _ = job.thread.join();
            reply_all(&job.replies, &Err(Error::Closed));
        }
    }
}
