//! The writer thread: requests, the batching loop (group commit), acknowledgements,
//! automatic and explicit rebuilds, and shutdown.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, MutexGuard};

use crate::codec::chain::Chain;
use crate::error::{Error, Result};
use crate::fs::{FileMeta, Fs, FsFile};
use crate::progress::{bump, nanos, Tracking};
use crate::storage::{self, BackupWriter, Paths};

/// One message to the writer thread. `U` undoes a write's changes to the map.
pub(crate) enum Request<U> {
    /// Append `data` (whole record lines of one transaction) as part of a batch.
    Write {
        seq: u64,
        data: Vec<u8>,
        records: u64,
        undo: U,
    },
    /// Rebuild the file now and report how it went.
    Compact(Sender<Result<()>>),
    /// Make everything before this durable, end the session cleanly, report, and stop.
    Shutdown(Sender<Result<()>>),
    /// Nothing to do: wakes the writer thread after a commit written by its caller started
    /// a rebuild, so that the thread waits for the rebuild's end too.
    Wake,
}

/// The typed side of the database, as the writer sees it.
pub(crate) trait TypedSide: Send + Sync + 'static {
    /// What undoes one write's changes to the map, kept until the write is durable.
    type Undo: Send + 'static;
    /// Serializes every live pair, in chunks of whole lines, one shard at a time (the hash
    /// map: in pieces of a shard, each cloned under that shard's read lock). Returns the
    /// last sequence number the copy may include.
    fn snapshot(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64>;
    /// Refuses every later submission.
    fn refuse_writes(&self);
    /// Undoes `undos` (oldest first in the vector), newest first, so that memory matches
    /// the disk again; readers see all of them undone or none.
    fn undo(&self, undos: Vec<Self::Undo>);
    /// Live keys.
    fn live_keys(&self) -> u64;
}

/// Tunables the writer needs.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    pub(crate) batch_bytes: usize,
    pub(crate) compact_ratio: f64,
    pub(crate) compact_floor: u64,
    pub(crate) preallocate: bool,
    /// Longest the writer holds a batch open for the committers it expects (zero: never).
    pub(crate) commit_wait: Duration,
}

/// The main file as the open left it: what the writer appends to.
pub(crate) struct MainFile {
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) paths: Paths,
    pub(crate) file: Box<dyn FsFile>,
    /// Its length, every byte of it vouched for by recovery and durable.
    pub(crate) len: u64,
    /// The checksum chain the session started at that length.
    pub(crate) chain: Chain,
}

/// The state owned by the writer thread.
pub(crate) struct Writer<E: TypedSide> {
    fs: Arc<dyn Fs>,
    paths: Paths,
    file: Box<dyn FsFile>,
    len: u64,
    /// Length of `P` including preallocated zeros after `len`.
    allocated: u64,
    /// The checksum chain of this incarnation of `P`, over every byte after its count.
    chain: Chain,
    rx: Receiver<Request<E::Undo>>,
    engine: Arc<E>,
    tracking: Arc<Tracking>,
    config: WriterConfig,
    /// Control requests met while a rebuild gathered writes; handled before the queue.
    deferred: VecDeque<Request<E::Undo>>,
    /// The number of the last write taken from the queue.
    taken: u64,
    /// The rebuild in progress, if any.
    job: Option<RebuildJob>,
    /// Writes of the batch being gathered or written: kept here, not on the stack, so
    /// that after a panic they can still be undone.
    pending: Vec<Pending<E::Undo>>,
    poisoned: bool,
    /// A shutdown was taken from the queue while failing it.
    stop: bool,
    /// Automatic rebuilds that failed in a row.
    auto_failures: u32,
    /// No automatic rebuild starts before `P` is this long (backs off after failures).
    auto_after_len: u64,
    /// The thread closing the file a rebuild replaced, if it may still run.
    closer: Option<JoinHandle<()>>,
    /// How long the writer may wait, batch by batch, for committers it expects.
    group: GroupCommit,
}

/// The group-commit wait of the batch being gathered.
#[derive(Debug, Default)]
struct BatchWait {
    /// When the wait began, and when it ends.
    span: Option<(Instant, Instant)>,
    /// A request arrived while waiting.
    gained: bool,
    /// No more waiting in this batch.
    done: bool,
}

/// Group commit: a committer released by a sync comes back with its next commit a few
/// microseconds later, just after the writer started the next batch without it, so that
/// with several committing threads the batches alternate between two halves of them. The
/// writer expects, in its next batch, the requests of the batch it just synced plus
/// those that arrived during that sync, and holds the batch open for them, for at most
/// the last sync's duration (capped by [`Options::commit_wait`](crate::Options)), and
/// only when no more are missing than twice the cores. With one committer nothing
/// arrives during a sync and it never waits. A wait that gains nothing, or that takes
/// more than half a sync (the committers come back slowly: busy cores), is not worth
/// it: the writer then skips the next waits, twice as many each time (up to 64).
#[derive(Debug)]
struct GroupCommit {
    /// Requests expected in the next batch.
    expect: usize,
    /// Duration of the last write and sync.
    last_sync: Duration,
    /// Batches still to write without waiting, after waits not worth it.
    skip: u32,
    /// The next `skip` after a wait not worth it.
    backoff: u32,
    /// The cores this process may use: at most twice as many missing committers are
    /// waited for.
    cores: usize,
}

impl GroupCommit {
    /// Judges a wait that `gained` requests or not and took `took`.
    fn judge(&mut self, gained: bool, took: Duration) {
        if gained && took <= self.last_sync / 2 {
            self.backoff = 0;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2 + 1).min(64);
        }
    }
}

struct Pending<U> {
    seq: u64,
    bytes: usize,
    undo: U,
}

/// A durable batch's acknowledgement, still to give: its waiters wake, its room in the
/// queue is given back, then what undoes its writes is dropped (the replaced values: user
/// `Drop`, last). The writer thread gives it at once; a lone committer once it let go
/// of the writer's state.
#[must_use = "the batch's waiters wait until it is given"]
pub(crate) struct Ack<U> {
    last: u64,
    requests: usize,
    bytes: usize,
    done: Vec<Pending<U>>,
}

impl<U> Default for Ack<U> {
    fn default() -> Self {
        Ack {
            last: 0,
            requests: 0,
            bytes: 0,
            done: Vec::new(),
        }
    }
}

impl<U> Ack<U> {
    /// Gives the acknowledgement (nothing for an empty or failed batch).
    pub(crate) fn give(self, tracking: &Tracking) {
        if self.requests == 0 {
            return;
        }
        tracking.progress.advance(self.last);
        tracking.budget.release(self.requests, self.bytes);
        // Last: may panic (user `Drop`); the batch is acknowledged by then.
        drop(self.done);
    }
}

/// A rebuild whose copy runs on its own thread.
struct RebuildJob {
    done: Receiver<Result<Copied>>,
    thread: JoinHandle<()>,
    replies: Vec<Sender<Result<()>>>,
    /// Every write taken from the queue since the copy began and not yet appended to the
    /// backup: its lines and records. The rebuild thread takes them in rounds once the
    /// copy is written (step R3a); the install appends the rest (R3').
    tail: Arc<Mutex<Tail>>,
}

/// The writer's state, shared by its thread and a lone committer (see
/// [`Writer::may_write_alone`]).
pub(crate) type WriterState<E> = Arc<Mutex<Writer<E>>>;

/// Writes taken from the queue during a rebuild, in the order taken: lines and records.
type Tail = Vec<(Vec<u8>, u64)>;

/// The lines of `tail` in one buffer, in order, and how many records they hold.
fn joined(tail: Tail) -> (Vec<u8>, u64) {
    let mut buf = Vec::with_capacity(tail.iter().map(|(d, _)| d.len()).sum());
    let mut records = 0;
    for (data, n) in tail {
        buf.extend_from_slice(&data);
        records += n;
    }
    (buf, records)
}

/// Rounds of R3a at most: each appends the writes taken during the round before, so
/// that under a steady load the last round (and what the install appends) is small.
const CATCH_UP_ROUNDS: usize = 8;

/// A round of R3a that appends fewer bytes than this is the last: what arrives during
/// the next round would be fewer still, and the install appends it.
const CATCH_UP_ENOUGH: usize = 64 << 10;

/// Runs when the writer thread ends, however it ends: refuses later writes and frees
/// every caller waiting for room in the queue; if the thread unwinds from a panic, fails
/// every request that is not durable, so that no waiter blocks forever. Then lets go of
/// the queue (the writer's state outlives the thread: the connection shares it), so
/// that what is still queued is dropped and a later request fails at once instead of
/// waiting for a reply.
struct OnExit<E: TypedSide> {
    state: WriterState<E>,
    engine: Arc<E>,
    tracking: Arc<Tracking>,
    path: std::path::PathBuf,
}

impl<E: TypedSide> Drop for OnExit<E> {
    fn drop(&mut self) {
        // Refuse first: a submission numbered before this is already queued, and the
        // failure below covers it.
        self.engine.refuse_writes();
        self.tracking.budget.close();
        if std::thread::panicking() {
            self.tracking.progress.abort(Error::internal(format!(
                "the writer thread of {} panicked",
                self.path.display()
            )));
        } else {
            self.tracking.progress.stop();
        }
        let mut w = self.state.lock();
        w.stop = true;
        w.rx = crossbeam_channel::never();
    }
}

/// Tells every caller of `compact` waiting on a rebuild how it ended.
fn reply_all(replies: &[Sender<Result<()>>], r: &Result<()>) {
    for reply in replies {
        let _ = reply.send(r.clone());
    }
}

/// What the rebuild thread hands back: the backup with the copy in it (synced), the last
/// write number the copy may include, and its records.
struct Copied {
    backup: BackupWriter,
    through: u64,
    records: u64,
}

/// Bytes of the copy the rebuild thread writes between two syncs of the backup.
const SYNC_EVERY: usize = 8 << 20;

/// The rebuild thread's work: steps R1, R4, R2, R3a and R3. `like` is the main file's
/// identity, which the new file takes; `tail` the writes the writer thread takes
/// meanwhile.
fn copy_map<E: TypedSide>(
    fs: Arc<dyn Fs>,
    paths: Paths,
    like: &FileMeta,
    engine: &E,
    tail: &Mutex<Tail>,
) -> Result<Copied> {
    let mut backup = BackupWriter::create(fs, paths, like)?;
    let mut records = 0u64;
    let mut unsynced = 0;
    let through = engine.snapshot(&mut |chunk| {
        records += crate::codec::count_lines(chunk);
        backup.write(chunk)?;
        // Flushed as it goes: one flush of the whole copy at the end would keep the
        // device busy for a while, and the commits' syncs would queue behind it.
        unsynced += chunk.len();
        if unsynced >= SYNC_EVERY {
            unsynced = 0;
            backup.sync()?;
        }
        Ok(())
    })?;
    // (R3a) The writes taken since the copy began, in the order taken, round after round
    // while they are many, so that the writer's install (R3') appends and syncs only
    // those of the last round. The same bytes, in the same order, as if the install had
    // appended them all.
    for _ in 0..CATCH_UP_ROUNDS {
        let taken = std::mem::take(&mut *tail.lock());
        if taken.is_empty() {
            break;
        }
        let (buf, n) = joined(taken);
        records += n;
        backup.write(&buf)?;
        if buf.len() < CATCH_UP_ENOUGH {
            break;
        }
    }
    backup.sync()?;
    Ok(Copied {
        backup,
        through,
        records,
    })
}

impl<E: TypedSide> Writer<E> {
    /// Starts the thread `ptvp35-writer`, which appends to `main` what it takes from
    /// `rx` and undoes it in `engine` if it fails. Returns the thread and its state, which
    /// a committing thread may lock to write its own commit (see [`Writer::may_write_alone`]).
    pub(crate) fn spawn(
        main: MainFile,
        rx: Receiver<Request<E::Undo>>,
        engine: Arc<E>,
        tracking: Arc<Tracking>,
        config: WriterConfig,
    ) -> Result<(JoinHandle<()>, WriterState<E>)> {
        let MainFile {
            fs,
            paths,
            file,
            len,
            chain,
        } = main;
        let path = paths.main.clone();
        let writer = Writer {
            fs,
            paths,
            file,
            len,
            allocated: len,
            chain,
            rx,
            engine: Arc::clone(&engine),
            tracking: Arc::clone(&tracking),
            config,
            deferred: VecDeque::new(),
            taken: 0,
            job: None,
            pending: Vec::new(),
            poisoned: false,
            stop: false,
            auto_failures: 0,
            auto_after_len: 0,
            closer: None,
            group: GroupCommit {
                expect: 0,
                last_sync: Duration::ZERO,
                skip: 0,
                backoff: 0,
                cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            },
        };
        let on_exit = OnExit {
            state: Arc::new(Mutex::new(writer)),
            engine,
            tracking,
            path: path.clone(),
        };
        let shared = Arc::clone(&on_exit.state);
        // The open returns once the thread waits for requests: a first commit then finds
        // it idle (`may_write_alone`), not on its way there.
        let (ready, idle) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("ptvp35-writer".into())
            .spawn(move || Self::run(&on_exit, ready))
            .map_err(|e| Error::io("spawn writer thread for", &path, e))?;
        let _ = idle.recv();
        Ok((thread, shared))
    }

    fn run(on_exit: &OnExit<E>, ready: Sender<()>) {
        let path = on_exit.path.display().to_string();
        let mut w = on_exit.state.lock();
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::serve(&mut w, ready);
        }));
        w.join_closer();
        if let Err(panic) = served {
            // User code run on this thread panicked (a replaced value's `Drop`, a key's
            // `Eq` in an undo, a custom `Fs`). Poison as a failed sync does, so that
            // memory matches the disk and every waiter hears, then let the panic go on:
            // `close` reports it. A batch may be written and not synced: cut it, as
            // after a failed sync, or a reopen in this process reads it back.
            w.cut_failed_tail();
            let e = Error::internal(format!("the writer thread of {path} panicked"));
            let pending = std::mem::take(&mut w.pending);
            let last = pending.last().map_or(0, |p| p.seq);
            w.poison(pending, last, e);
            std::panic::resume_unwind(panic);
        }
    }

    /// The batching loop, until a shutdown. The state is locked throughout, except while
    /// the thread waits for a request with nothing else to do: a committing thread may
    /// then write its own commit ([`Writer::may_write_alone`]).
    fn serve(w: &mut MutexGuard<'_, Self>, ready: Sender<()>) {
        let mut ready = Some(ready);
        let mut buf = Vec::new();
        let rx = w.rx.clone();
        loop {
            let first = if w.deferred.is_empty() {
                if let Some(job) = &w.job {
                    crossbeam_channel::select! {
                        recv(rx) -> r => match r {
                            Ok(r) => r,
                            Err(_) => break,
                        },
                        recv(job.done) -> copied => {
                            let copied = copied.unwrap_or_else(|_| Err(Error::internal(
                                "the rebuild thread panicked",
                            )));
                            w.finish_rebuild(copied);
                            // A failed install poisons, which may take a shutdown from
                            // the queue: stop then, or `close` waits forever.
                            if w.stop {
                                break;
                            }
                            continue;
                        }
                    }
                } else {
                    // Idle: let go of the state while waiting.
                    let r = MutexGuard::unlocked(w, || {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                        rx.recv()
                    });
                    match r {
                        Ok(r) => r,
                        Err(_) => break,
                    }
                }
            } else {
                let Some(r) = w.next() else { break };
                r
            };
            if w.batch(first, &mut buf) {
                break;
            }
        }
    }

    /// Gathers a batch that begins with `first`, writes and acknowledges it, and handles
    /// the control request that ended it, if any. Returns whether the thread should stop.
    fn batch(&mut self, first: Request<E::Undo>, buf: &mut Vec<u8>) -> bool {
        let mut control = None;
        let mut records = 0;
        let mut wait = BatchWait::default();
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
                    if let Some(job) = &self.job {
                        job.tail.lock().push((data.clone(), n));
                    }
                    if buf.is_empty() {
                        // A large transaction is written from its own buffer, uncopied.
                        *buf = data;
                    } else {
                        buf.extend_from_slice(&data);
                    }
                    records += n;
                    self.taken = seq;
                    self.pending.push(Pending { seq, bytes, undo });
                }
                Request::Wake => {}
                other => {
                    control = Some(other);
                    break;
                }
            }
            if buf.len() < self.config.batch_bytes {
                next = self.next();
                if next.is_none() {
                    next = self.wait_for_more(&mut wait);
                }
            }
        }
        self.judge_wait(&wait);
        if !self.pending.is_empty() {
            if self.poisoned {
                // Only reachable for requests sent before the refusal took effect.
                let failed = std::mem::take(&mut self.pending);
                let (n, bytes) = (failed.len(), failed.iter().map(|p| p.bytes).sum());
                self.engine
                    .undo(failed.into_iter().map(|p| p.undo).collect());
                self.tracking.budget.release(n, bytes);
                buf.clear();
            } else {
                // Still holding the state: a user `Drop` that panics here ends this
                // thread (poisoning) before any commit can be written alone.
                self.write_batch(buf, records, control.is_none())
                    .give(&self.tracking);
            }
        }
        match control {
            Some(Request::Compact(reply)) => self.start_rebuild(Some(reply)),
            Some(Request::Shutdown(reply)) => {
                self.abandon_rebuild();
                self.join_closer();
                let r = if self.poisoned {
                    // The session's flags stay; the next open recovers from them.
                    Err(self.poisoned_error())
                } else {
                    self.trim_preallocation()
                        .and_then(|()| storage::end_session(&*self.fs, &self.paths))
                };
                let _ = reply.send(r);
                // No commit may be written alone after this.
                self.stop = true;
            }
            // An automatic rebuild was considered in `write_batch`.
            _ => {}
        }
        self.stop
    }

    /// Whether the committing thread that holds this state (taken with `try_lock` while
    /// it numbered write `seq`, under the map's order lock) may write and sync that write
    /// itself instead of queueing it: when the writer thread has nothing to do and would
    /// not wait for other committers. The writer thread keeps its state locked except
    /// while it waits with nothing to do, so the lock alone says it is idle or about to
    /// be; the rest makes sure. Every earlier write is durable (none is queued or in the
    /// writer thread's hands, so none can be written after this one), nothing is queued,
    /// no rebuild runs (its copy must see every write; the writer thread keeps its state
    /// locked while one runs anyway), and the last batch held one commit with none
    /// arriving during its sync (with more committers, the writer thread's batches gather
    /// them). Later writes are numbered only once this one is claimed, and queue behind
    /// it. Such a commit crosses no thread: no wake-up of the writer thread and none
    /// back, which is most of what one committing thread waits for beyond the sync.
    pub(crate) fn may_write_alone(&self, seq: u64) -> bool {
        !self.poisoned
            && !self.stop
            && self.job.is_none()
            && self.deferred.is_empty()
            && self.pending.is_empty()
            && self.group.expect <= 1
            && self.rx.is_empty()
            && self.tracking.progress.durable() + 1 == seq
    }

    /// Writes and syncs write `seq` on the calling thread, as a batch of its own (once
    /// [`Writer::may_write_alone`] said so, the state still locked), or fails and
    /// poisons as the writer thread would; an automatic rebuild may start, as after any
    /// batch. Returns the write's acknowledgement, for the caller to give once it let go
    /// of this state (it drops the values the write replaced: user `Drop`), and whether
    /// the writer thread must be woken (a rebuild started, which that thread finishes).
    ///
    /// A panic of user code here (a custom [`Fs`], or `Eq` while a failed write is
    /// undone) poisons the database as a panic on the writer thread does, then goes on
    /// in the caller.
    pub(crate) fn write_alone(
        &mut self,
        seq: u64,
        data: Vec<u8>,
        records: u64,
        undo: E::Undo,
    ) -> (Ack<E::Undo>, bool) {
        let mut buf = data;
        let bytes = buf.len();
        self.taken = seq;
        self.pending.push(Pending { seq, bytes, undo });
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.write_batch(&mut buf, records, true)
        }));
        match written {
            Ok(ack) => (ack, self.job.is_some()),
            Err(panic) => {
                let e = Error::internal(format!(
                    "a commit to {} panicked while its caller's thread wrote it",
                    self.paths.main.display()
                ));
                let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // Written and not synced, perhaps: cut, as after a failed sync.
                    self.cut_failed_tail();
                    let pending = std::mem::take(&mut self.pending);
                    let last = pending.last().map_or(0, |p| p.seq);
                    self.poison(pending, last, e.clone());
                }));
                self.tracking.budget.release(1, bytes);
                if poisoned.is_err() {
                    // The undo panicked too: as when the writer thread dies, refuse
                    // every later write and fail every waiter.
                    self.poisoned = true;
                    self.engine.refuse_writes();
                    self.tracking.budget.close();
                    self.tracking.progress.abort(e);
                }
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// Waits, within the batch's bound, for a request the group-commit estimate expects
    /// (see [`GroupCommit`]); `None` when the batch should be written now.
    fn wait_for_more(&mut self, wait: &mut BatchWait) -> Option<Request<E::Undo>> {
        let g = &mut self.group;
        // The batch's writes so far (`pending` holds exactly those).
        let writes = self.pending.len();
        // Many more missing committers than cores cannot all be back soon: they come one
        // by one as the cores free up, each waking the writer; better write now.
        if wait.done || writes >= g.expect || g.expect - writes > 2 * g.cores {
            return None;
        }
        if wait.span.is_none() {
            let bound = g.last_sync.min(self.config.commit_wait);
            if bound.is_zero() || g.skip > 0 {
                g.skip = g.skip.saturating_sub(1);
                wait.done = true;
                return None;
            }
            bump(&self.tracking.counters.commit_waits, 1);
            let now = Instant::now();
            wait.span = Some((now, now + bound));
        }
        let (_, until) = wait.span?;
        if let Ok(r) = self.rx.recv_deadline(until) {
            wait.gained = true;
            return Some(r);
        }
        wait.done = true;
        None
    }

    /// After a batch is gathered: a wait that gained nothing or took more than half the
    /// last sync makes the next waits rarer (see [`GroupCommit`]).
    fn judge_wait(&mut self, wait: &BatchWait) {
        if let Some((began, _)) = wait.span {
            self.group.judge(wait.gained, began.elapsed());
        }
    }

    /// Writes and syncs one batch, then fails every request in it, or returns its
    /// acknowledgement for the caller to give. With `may_compact`, it first considers an
    /// automatic rebuild.
    fn write_batch(&mut self, buf: &mut Vec<u8>, records: u64, may_compact: bool) -> Ack<E::Undo> {
        let last = self.pending.last().map_or(0, |p| p.seq);
        let bytes: usize = self.pending.iter().map(|p| p.bytes).sum();
        let n = self.pending.len();
        let result = if buf.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let r = self.append(buf, records, n as u64);
            // What arrived during the write and sync: those requests and this batch's
            // are the committers the next batch may wait for.
            self.group.last_sync = started.elapsed();
            self.group.expect = n + self.rx.len();
            r
        };
        buf.clear();
        if buf.capacity() > 2 * self.config.batch_bytes.max(1 << 20) {
            // Do not keep a huge transaction's buffer around.
            *buf = Vec::new();
        }
        let done = std::mem::take(&mut self.pending);
        match result {
            Ok(()) => {
                // Decide before waking the waiters: what they submit next must not change
                // the decision (the crash exploration relies on a reproducible schedule).
                if may_compact {
                    self.maybe_compact();
                }
                Ack {
                    last,
                    requests: n,
                    bytes,
                    done,
                }
            }
            Err(e) => {
                self.cut_failed_tail();
                self.poison(done, last, e);
                self.tracking.budget.release(n, bytes);
                Ack::default()
            }
        }
    }

    /// After a failed write or sync: the disk's state is unknown, so refuse further writes
    /// (no retry-and-trust), fail every waiter whose request is not durable (those up to
    /// `last` with `e`), and undo in memory what did not reach the disk, including
    /// everything still queued.
    fn poison(&mut self, failed: Vec<Pending<E::Undo>>, last: u64, e: Error) {
        self.poisoned = true;
        self.tracking.progress.record(e);
        self.engine.refuse_writes();
        let mut undos: Vec<E::Undo> = failed.into_iter().map(|p| p.undo).collect();
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
                Request::Wake => {}
            }
        }
        self.engine.undo(undos);
        self.tracking.progress.fail(last);
        self.tracking.budget.release(drained, drained_bytes);
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
        match self.tracking.progress.poisoned() {
            Some(cause) => Error::Poisoned { cause },
            None => Error::Closed,
        }
    }

    fn append(&mut self, buf: &mut Vec<u8>, records: u64, requests: u64) -> Result<()> {
        self.chain.close_batch(buf);
        let end = self.len + buf.len() as u64;
        if self.config.preallocate && end > self.allocated {
            self.preallocate(end)?;
        }
        let path = &self.paths.main;
        storage::wrap("write", path, self.file.write_at(self.len, buf))?;
        storage::wrap("fsync", path, self.file.sync_data())?;
        self.len += buf.len() as u64;
        let c = &self.tracking.counters;
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
    /// a clean close trims them. At most a mebibyte at a time: the batch's sync flushes
    /// them, and its committers wait for that (an eighth of a 145 MB file, as a rebuild
    /// leaves it, made such commits take 30-80 ms).
    fn preallocate(&mut self, end: u64) -> Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let chunk = (self.len / 8).clamp(256 << 10, 1 << 20);
        let target = (end + chunk).next_multiple_of(4096);
        // The batch itself fills up to `end`; only what lies beyond needs zeros.
        let mut at = self.allocated.max(end);
        while at < target {
            let n = usize::try_from(target - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
            storage::wrap(
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
            storage::wrap("truncate", path, self.file.set_len(self.len))?;
            storage::wrap("fsync", path, self.file.sync_data())?;
            self.allocated = self.len;
        }
        Ok(())
    }

    fn maybe_compact(&mut self) {
        if self.poisoned
            || self.job.is_some()
            || self.len < self.config.compact_floor
            || self.len < self.auto_after_len
        {
            return;
        }
        let live = self.engine.live_keys().max(1);
        let in_file = self
            .tracking
            .counters
            .records_in_file
            .load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)] // a ratio of counts; precision is irrelevant
        let grown = in_file as f64 > self.config.compact_ratio * live as f64;
        if grown {
            self.start_rebuild(None);
        }
    }

    /// The next request without waiting: a deferred one first, then the queue.
    fn next(&mut self) -> Option<Request<E::Undo>> {
        if let Some(r) = self.deferred.pop_front() {
            return Some(r);
        }
        self.rx.try_recv().ok()
    }

    /// Starts a rebuild on the thread `ptvp35-rebuild` (steps R1, R4, R2, R3): it copies
    /// the map into `P.backup` one shard at a time while this thread goes on appending to
    /// `P`. `reply`, if any, learns how the rebuild ended.
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
        let like = match self.file.meta() {
            Ok(m) => m,
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::io("stat", &self.paths.main, e)));
                }
                return;
            }
        };
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let (fs, paths, engine) = (
            Arc::clone(&self.fs),
            self.paths.clone(),
            Arc::clone(&self.engine),
        );
        let tail = Arc::new(Mutex::new(Tail::new()));
        let taken = Arc::clone(&tail);
        let spawned = std::thread::Builder::new()
            .name("ptvp35-rebuild".into())
            .spawn(move || {
                let _ = done_tx.send(copy_map(fs, paths, &like, &*engine, &taken));
            });
        match spawned {
            Ok(thread) => {
                self.job = Some(RebuildJob {
                    done,
                    thread,
                    replies: reply.into_iter().collect(),
                    tail,
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

    /// Finishes the rebuild whose copy is done (steps R3' and R5–R9, five syncs on this
    /// thread).
    ///
    /// The copy took a piece of a shard at a time, so it may hold part of a transaction
    /// applied meanwhile. Every write this thread took from the queue since the copy
    /// began is therefore appended to the backup again (replaying a write over a copy
    /// that already holds it is harmless; most of them the rebuild thread appended
    /// already, R3a, and this thread appends the rest), and so is every write still
    /// queued up to the last number the copy could have seen: the backup then holds
    /// exactly the state after that write.
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
                self.back_off();
                reply_all(&replies, &Err(e));
                return;
            }
        };
        let mut replayed = Vec::new();
        let started = Instant::now();
        // The rebuild thread has ended: what it left of the tail is the install's.
        let tail = std::mem::take(&mut *tail.lock());
        let r = self.install(copied, tail, &mut replayed);
        self.tracking
            .counters
            .rebuild_install_ns
            .store(nanos(started.elapsed()), Ordering::Relaxed);
        let (n, bytes) = (replayed.len(), replayed.iter().map(|p| p.bytes).sum());
        match &r {
            Ok(through) => {
                (self.auto_failures, self.auto_after_len) = (0, 0);
                self.tracking.progress.advance(*through);
                self.tracking.budget.release(n, bytes);
                drop(replayed);
            }
            Err(e) => {
                let last = replayed.last().map_or(0, |p| p.seq);
                self.poison(replayed, last, e.clone());
                self.tracking.budget.release(n, bytes);
            }
        }
        reply_all(&replies, &r.map(drop));
    }

    /// After a rebuild failed without harm to `P`: the next automatic one waits until `P`
    /// has grown by its length (at least 64 KiB) again, doubling with each failure in a
    /// row, so a rebuild that keeps failing is tried a few times, not after every batch.
    /// An explicit [`compact`](crate::DbConnection::compact) is still tried at once.
    fn back_off(&mut self) {
        self.auto_failures = self.auto_failures.saturating_add(1);
        let step = self.len.max(self.config.compact_floor).max(64 << 10);
        let step = step.saturating_mul(1 << (self.auto_failures - 1).min(20));
        self.auto_after_len = self.len.saturating_add(step);
    }

    fn install(
        &mut self,
        copied: Copied,
        tail: Tail,
        replayed: &mut Vec<Pending<E::Undo>>,
    ) -> Result<u64> {
        let Copied {
            mut backup,
            through,
            mut records,
        } = copied;
        // The tail and the queued writes go to the backup in one write, not one per
        // request.
        let (mut buf, n) = joined(tail);
        records += n;
        while self.taken < through {
            // Every write up to `through` is queued already: this never waits for long.
            match self.rx.recv() {
                Ok(Request::Write {
                    seq,
                    data,
                    records: n,
                    undo,
                }) => {
                    buf.extend_from_slice(&data);
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
        if !buf.is_empty() {
            backup.write(&buf)?;
        }
        drop(buf);
        let installed = backup.install()?;
        // From the rename on, the new file is `P`: keep it (and its lock) even if a
        // later step failed, so that the database stays locked while its owner lives.
        let old = std::mem::replace(&mut self.file, installed.file);
        self.close_off_thread(old);
        let (len, chain) = installed.result?;
        self.len = len;
        self.allocated = len;
        self.chain = chain;
        let c = &self.tracking.counters;
        c.file_len.store(len, Ordering::Relaxed);
        c.records_in_file.store(records, Ordering::Relaxed);
        bump(&c.rebuilds, 1);
        bump(&c.syncs, 2);
        bump(&c.requests, replayed.len() as u64);
        Ok(through)
    }

    /// Closes the replaced main file on a thread of its own: the last close of a large
    /// unlinked file frees its blocks, tens of milliseconds that commits would wait for.
    /// The thread is joined before the next one starts and at shutdown.
    fn close_off_thread(&mut self, old: Box<dyn FsFile>) {
        self.join_closer();
        // Without a thread, the file is closed here (the closure, holding it, is dropped).
        self.closer = std::thread::Builder::new()
            .name("ptvp35-close".into())
            .spawn(move || drop(old))
            .ok();
    }

    fn join_closer(&mut self) {
        if let Some(h) = self.closer.take() {
            let _ = h.join();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupCommit {
        GroupCommit {
            expect: 4,
            last_sync: Duration::from_millis(10),
            skip: 0,
            backoff: 0,
            cores: 2,
        }
    }

    /// Waits that gain nothing, or gain late (busy cores), skip 0, 1, 3, 7, ... up to 64
    /// batches before the next wait; a quick gain (once the skips ran out: a wait only
    /// begins then) starts the sequence again.
    #[test]
    fn waits_not_worth_it_make_the_next_waits_rarer() {
        let mut g = group();
        let mut skips = Vec::new();
        for i in 0..9 {
            // Alternately nothing gained and a gain after more than half a sync.
            g.judge(i % 2 == 1, Duration::from_millis(6));
            skips.push(g.skip);
            g.skip = 0;
        }
        assert_eq!(skips, [0, 1, 3, 7, 15, 31, 63, 64, 64]);
        g.judge(true, Duration::from_millis(5));
        assert_eq!((g.skip, g.backoff), (0, 0));
        g.judge(false, Duration::from_millis(1));
        g.judge(true, Duration::from_millis(7));
        assert_eq!((g.skip, g.backoff), (1, 3));
    }

    /// A committer holding the writer's state may write its commit alone only when the
    /// writer thread has nothing in hand: here a write it took from the queue, and waits
    /// for the state to write, must go first.
    #[test]
    fn a_write_is_written_alone_only_after_every_earlier_one_is_durable() -> crate::Result<()> {
        let dir = crate::test_dir::Dir::new("writer-alone").expect("a scratch directory");
        let db = crate::DbConnection::<String, u64>::open(dir.0.join("a.db"))?;
        db.set("a".into(), 1)?;
        let state = Arc::clone(db.writer_state.as_ref().expect("a writer"));
        {
            let w = state.lock();
            assert!(w.may_write_alone(2), "the writer thread is idle");
            assert!(!w.may_write_alone(3), "write 2 is not durable");
        }
        let w = state.lock();
        db.set_nowait("b".into(), 2)?;
        // The writer thread takes write 2 from the queue, then waits for the state.
        let since = Instant::now();
        while !w.rx.is_empty() {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "write 2 never taken"
            );
            std::thread::yield_now();
        }
        assert!(
            !w.may_write_alone(3),
            "write 2 is in the writer thread's hands"
        );
        drop(w);
        db.commit()?;
        assert!(state.lock().may_write_alone(3), "idle again");
        drop(state);
        db.close()
    }
}
