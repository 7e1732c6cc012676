//! The reference model (the submitted transactions in order, which were acknowledged),
//! a workload of steps that drives a real `DbConnection` and the model side by side, and
//! the checker that judges a recovered database against the model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use super::disk::{Effect, Fault, OpKind};
use super::sim::{Owner, SimFs};
use ptvp35::{DbConnection, Delta, Error, Hashed, MapKind, Options};

/// The database type every check uses: string keys `"k0"`, `"k1"`, ... and values that
/// are unique per write, so that each state names the writes it holds.
pub type Db<M = Hashed> = DbConnection<String, u64, M>;

/// The map kinds the test kit runs the engine with ([`Hashed`] and
/// [`Ordered`](ptvp35::Ordered)): the `_as` forms of its entry points take one.
pub trait Kind: MapKind<String, u64> + MapKind<String, serde_json::Value> {}

impl<M: MapKind<String, u64> + MapKind<String, serde_json::Value>> Kind for M {}

/// A state of the database, ordered for comparison and printing.
pub type State = BTreeMap<String, u64>;

/// The main file's path inside a [`SimFs`].
#[must_use]
pub fn db_path() -> PathBuf {
    PathBuf::from("/db/data.db")
}

/// The six paths of the database at `path`.
#[must_use]
pub fn six_paths(path: &Path) -> [PathBuf; 6] {
    let with = |s: &str| {
        let mut p = path.as_os_str().to_os_string();
        p.push(s);
        PathBuf::from(p)
    };
    [
        path.to_path_buf(),
        with(".backup"),
        with(".recover"),
        with(".truncate"),
        with(".truncate_flag"),
        with(".error"),
    ]
}

/// Opens the database at [`db_path`] over `fs` with `opts`, one parse thread and a short
/// queue (the default queue of 65,536 slots costs more to allocate than a whole check).
///
/// # Errors
///
/// What the open returns.
pub fn open_on(fs: &SimFs, opts: &Options) -> Result<Db, Error> {
    open_typed(fs, opts)
}

/// [`open_on`] with the map `M`.
///
/// # Errors
///
/// What the open returns.
pub fn open_on_as<M: Kind>(fs: &SimFs, opts: &Options) -> Result<Db<M>, Error> {
    open_with_handle(fs, opts).map(|(db, _)| db)
}

/// [`open_on`] with any value type and map.
pub(super) fn open_typed<V: ptvp35::Value, M: MapKind<String, V>>(
    fs: &SimFs,
    opts: &Options,
) -> Result<DbConnection<String, V, M>, Error> {
    open_with_handle(fs, opts).map(|(db, _)| db)
}

/// An open database and the handle it holds on its [`SimFs`].
type Opened<V, M> = (DbConnection<String, V, M>, Arc<SimFs>);

/// [`open_typed`], and the handle the database holds on `fs`: every thread of the engine
/// that may still touch the disk (the writer, a rebuild's copy) holds a clone of it, so
/// its count tells when a rebuild is over.
fn open_with_handle<V: ptvp35::Value, M: MapKind<String, V>>(
    fs: &SimFs,
    opts: &Options,
) -> Result<Opened<V, M>, Error> {
    let handle = Arc::new(fs.clone());
    let db = opts
        .clone()
        .filesystem(Arc::clone(&handle) as Arc<dyn ptvp35::Fs>)
        .parse_threads(1)
        .queue_limits(256, 1 << 20)
        .open_as(db_path())?;
    Ok((db, handle))
}

/// One submitted transaction.
#[derive(Debug, Clone)]
pub struct Txn {
    /// What it does to each key (`None`: removes it).
    pub changes: BTreeMap<String, Option<u64>>,
    /// Its submitter was told it is durable.
    pub acked: bool,
}

/// The model: the state before the first transaction, and every transaction submitted
/// since, in submission order.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// The state the transactions start from.
    pub base: State,
    /// Submitted transactions, in order.
    pub txns: Vec<Txn>,
    next_value: u64,
}

impl Model {
    /// A fresh value, never used before.
    pub fn value(&mut self) -> u64 {
        self.next_value += 1;
        self.next_value
    }

    /// Records a submitted transaction (nothing if it changes nothing); returns its index.
    pub fn submit(&mut self, changes: BTreeMap<String, Option<u64>>) -> Option<usize> {
        if changes.is_empty() {
            return None;
        }
        self.txns.push(Txn {
            changes,
            acked: false,
        });
        Some(self.txns.len() - 1)
    }

    /// Marks transaction `i` acknowledged.
    pub fn ack(&mut self, i: Option<usize>) {
        if let Some(t) = i.and_then(|i| self.txns.get_mut(i)) {
            t.acked = true;
        }
    }

    /// Marks the first `n` transactions acknowledged.
    pub fn ack_upto(&mut self, n: usize) {
        for t in self.txns.iter_mut().take(n) {
            t.acked = true;
        }
    }

    /// Marks every transaction submitted so far acknowledged.
    pub fn ack_all(&mut self) {
        for t in &mut self.txns {
            t.acked = true;
        }
    }

    /// The state after the first `k` transactions.
    #[must_use]
    pub fn state_after(&self, k: usize) -> State {
        let mut s = self.base.clone();
        for t in &self.txns[..k.min(self.txns.len())] {
            apply(&mut s, &t.changes);
        }
        s
    }

    /// The state after every submitted transaction (what readers see).
    #[must_use]
    pub fn current(&self) -> State {
        self.state_after(self.txns.len())
    }

    /// Starts the history again from `state`, a state that recovery gave (and that
    /// [`check`](Self::check) allowed): from an open on, what a later recovery may show
    /// is that state plus a prefix of what is submitted after it. A failed transaction
    /// that the open did not find is gone for good then; one that it found must stay.
    pub fn rebase(&mut self, state: State) {
        self.base = state;
        self.txns.clear();
    }

    /// Fewest transactions a recovered state must hold: through the last acknowledged one.
    #[must_use]
    pub fn min_prefix(&self) -> usize {
        self.txns.iter().rposition(|t| t.acked).map_or(0, |i| i + 1)
    }

    /// Checks that `got` is the state after some prefix of the submitted transactions
    /// that holds every acknowledged one; returns the length of that prefix.
    ///
    /// # Errors
    ///
    /// A description of the mismatch.
    pub fn check(&self, got: &State) -> Result<usize, String> {
        let min = self.min_prefix();
        let mut s = self.state_after(min);
        for k in min..=self.txns.len() {
            if k > min {
                apply(&mut s, &self.txns[k - 1].changes);
            }
            if &s == got {
                return Ok(k);
            }
        }
        let mut msg = format!(
            "recovered state {got:?} is not the state after any prefix of {} submitted \
             transactions holding the {min} first (acknowledged through {min}); base {:?}",
            self.txns.len(),
            self.base
        );
        for (i, t) in self.txns.iter().enumerate() {
            let _ = write!(msg, "\n  txn {i} acked={} {:?}", t.acked, t.changes);
        }
        Err(msg)
    }
}

fn apply(s: &mut State, changes: &BTreeMap<String, Option<u64>>) {
    for (k, v) in changes {
        match v {
            Some(v) => s.insert(k.clone(), *v),
            None => s.remove(k),
        };
    }
}

/// A key from a small number.
#[must_use]
pub fn key(n: u8) -> String {
    format!("k{n}")
}

/// One step of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `set`, waits.
    Set(u8),
    /// `set_nowait`.
    SetNowait(u8),
    /// `remove`, waits.
    Remove(u8),
    /// `remove_nowait`.
    RemoveNowait(u8),
    /// `commit`: waits for everything submitted.
    Commit,
    /// `commit_transaction` of a delta: `(key, true)` sets, `(key, false)` removes.
    Delta(Vec<(u8, bool)>),
    /// `submit_transaction` of a delta, without waiting.
    SubmitDelta(Vec<(u8, bool)>),
    /// An outer `Transaction` guard with changes, a nested guard with changes that is
    /// dropped (submitted into the outer one), rolled back, or panics; then the outer
    /// guard commits (waits) or is dropped (submitted without waiting).
    Nested {
        /// The outer guard's changes.
        outer: Vec<(u8, bool)>,
        /// The nested guard's changes.
        inner: Vec<(u8, bool)>,
        /// 0: the nested guard is dropped; 1: rolled back; 2: its thread panics.
        inner_end: u8,
        /// The outer guard commits instead of being dropped.
        commit: bool,
    },
    /// `transact`: reads `from`, sets `to` to a new value and removes `from`.
    Transact(u8, u8),
    /// `compact`: a rebuild through `P.backup` and `P.recover`.
    Compact,
    /// `close`, then open again (a clean close and a new session).
    Reopen,
}

/// The payload of the panics a workload raises on purpose (quiet, even under a fuzzer
/// whose panic hook aborts).
#[derive(Debug)]
pub struct IntendedPanic;

/// Installs (once) a panic hook that stays silent for [`IntendedPanic`] and passes every
/// other panic to the hook that was there before.
pub fn quiet_intended_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<IntendedPanic>() {
                prev(info);
            }
        }));
    });
}

fn changes_of(model: &mut Model, ops: &[(u8, bool)]) -> Vec<(String, Option<u64>)> {
    ops.iter()
        .map(|&(k, set)| (key(k), set.then(|| model.value())))
        .collect()
}

fn delta_of(changes: &[(String, Option<u64>)]) -> Result<Delta<String, u64>, Error> {
    let mut d = Delta::new();
    for (k, v) in changes {
        match v {
            Some(v) => d.set(k.clone(), *v)?,
            None => d.remove(k)?,
        }
    }
    Ok(d)
}

fn fill(view: &ptvp35::TransactionView<'_, String, u64>, ch: &[(String, Option<u64>)]) {
    for (k, v) in ch {
        let r = match v {
            Some(v) => view.set_nowait(k.clone(), *v),
            None => view.remove_nowait(k),
        };
        debug_assert!(r.is_ok(), "strings and integers always serialize");
    }
}

/// How a workload ended.
#[derive(Debug)]
pub struct Outcome<M: Kind = Hashed> {
    /// The open database, unless a step failed or the workload closed it.
    pub db: Option<Db<M>>,
    /// The first error, with the step that met it.
    pub error: Option<(usize, Error)>,
}

/// Opens the database and checks what recovery found against `model`, then rebases the
/// model on it. Returns the database and its handle on `fs` (see [`open_with_handle`]).
///
/// # Errors
///
/// What the open returns.
///
/// # Panics
///
/// If the recovered state is not one the model allows.
fn open_checked<M: Kind>(
    fs: &SimFs,
    opts: &Options,
    model: &mut Model,
) -> Result<(Db<M>, Arc<SimFs>), Error> {
    let (db, handle) = open_with_handle(fs, opts)?;
    let got = state_of(&db);
    if let Err(e) = model.check(&got) {
        panic!("the state recovered at a reopen is not allowed: {e}");
    }
    model.rebase(got);
    Ok((db, handle))
}

/// How long [`settle`] waits for a rebuild before it calls the run stuck.
const SETTLE_LIMIT: Duration = Duration::from_mins(2);

/// Waits until the engine is quiet: every write submitted so far is durable and no
/// rebuild runs. The model is left as it is: `commit` also returns `Ok` when a guard
/// dropped on a poisoned database had its submission refused (a drop cannot report it),
/// so it does not prove that the model's not-waited-for writes reached the disk; only
/// the steps' own acknowledgements count. The writer decides on an automatic
/// rebuild before it acknowledges the batch that triggers it, and a running rebuild holds
/// a clone of `handle`, so once `commit` returns, a count above `idle` (the count with
/// the writer alone) means a rebuild is still running.
///
/// # Panics
///
/// If a rebuild is still running [`SETTLE_LIMIT`] later.
fn settle<M: Kind>(db: &Db<M>, handle: &Arc<SimFs>, idle: usize) -> Result<(), Error> {
    db.commit()?;
    let deadline = Instant::now() + SETTLE_LIMIT;
    while Arc::strong_count(handle) > idle {
        assert!(
            Instant::now() < deadline,
            "a rebuild still runs {SETTLE_LIMIT:?} after the batch that started it"
        );
        thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

/// Runs `steps` against the database at [`db_path`] on `fs` (opening it first, and the
/// model rebased on what that open recovered), keeping `model` in step. Stops at the
/// first error: a failed call's transaction is recorded as submitted but not
/// acknowledged (it may or may not have reached the disk), so the model stays a sound
/// judge of any later recovery.
///
/// Steps follow each other as fast as the caller goes: how the writer groups
/// not-waited-for writes into batches, and when an automatic rebuild's copy runs, depend
/// on thread scheduling. [`run_steps_settled`] gives a reproducible schedule.
///
/// # Panics
///
/// If an open recovers a state the model does not allow.
pub fn run_steps(fs: &SimFs, opts: &Options, steps: &[Step], model: &mut Model) -> Outcome {
    run_steps_as::<Hashed>(fs, opts, steps, model)
}

/// [`run_steps`] with the map `M`.
///
/// # Panics
///
/// As [`run_steps`].
pub fn run_steps_as<M: Kind>(
    fs: &SimFs,
    opts: &Options,
    steps: &[Step],
    model: &mut Model,
) -> Outcome<M> {
    drive(fs, opts, steps, model, false)
}

/// [`run_steps`], each step run to quiescence: after it, every write submitted so far is
/// durable and no rebuild runs (see `settle`). Every batch then holds the writes of one
/// step, and a rebuild runs between two steps, except around a `Compact`: the step after
/// it (unless it is a `Compact` or a `Reopen`) runs during the rebuild's copy, and the
/// steps after that which do not wait are queued during the rebuild's last steps and go
/// to `P` in one batch, each at a point set by the filesystem (see `compact_with`). So the operations the run makes on
/// `fs`, in order, are the same on every run, whatever the machine's load: the crash
/// exploration depends on that.
///
/// # Panics
///
/// As [`run_steps`]; also if a rebuild does not end within two minutes.
pub fn run_steps_settled(fs: &SimFs, opts: &Options, steps: &[Step], model: &mut Model) -> Outcome {
    drive(fs, opts, steps, model, true)
}

/// [`run_steps_settled`] with the map `M`.
///
/// # Panics
///
/// As [`run_steps_settled`].
pub fn run_steps_settled_as<M: Kind>(
    fs: &SimFs,
    opts: &Options,
    steps: &[Step],
    model: &mut Model,
) -> Outcome<M> {
    drive(fs, opts, steps, model, true)
}

fn drive<M: Kind>(
    fs: &SimFs,
    opts: &Options,
    steps: &[Step],
    model: &mut Model,
    settled: bool,
) -> Outcome<M> {
    quiet_intended_panics();
    let (mut db, mut handle) = match open_checked(fs, opts, model) {
        Ok(opened) => {
            // The main file belongs to a service account from here on: every rebuild
            // and recovery must keep that (`verify` checks it).
            let _ = fs.set_owner(&db_path(), WORKLOAD_OWNER);
            opened
        }
        Err(e) => {
            return Outcome {
                db: None,
                error: Some((0, e)),
            }
        }
    };
    let mut idle = Arc::strong_count(&handle);
    // Steps already run with a `Compact` before them.
    let mut skip = 0;
    for (i, step) in steps.iter().enumerate() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if *step == Step::Reopen {
            let reopened = db.close().and_then(|()| {
                model.ack_all();
                open_checked(fs, opts, model)
            });
            match reopened {
                Ok(new) => {
                    (db, handle) = new;
                    idle = Arc::strong_count(&handle);
                }
                Err(e) => {
                    return Outcome {
                        db: None,
                        error: Some((i, e)),
                    }
                }
            }
            continue;
        }
        let r = match steps.get(i + 1) {
            Some(next) if settled && *step == Step::Compact && !next.rebuilds() => {
                let queued = steps[i + 2..]
                    .iter()
                    .take_while(|s| s.does_not_wait())
                    .count();
                skip = 1 + queued;
                compact_with(&db, fs, next, &steps[i + 2..i + 2 + queued], model)
                    .map_err(|(j, e)| (i + j, e))
            }
            _ => run_step(&db, step, model).map_err(|e| (i, e)),
        };
        let r = r.and_then(|()| {
            if settled {
                settle(&db, &handle, idle).map_err(|e| (i, e))
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            return Outcome {
                db: Some(db),
                error: Some(e),
            };
        }
    }
    Outcome {
        db: Some(db),
        error: None,
    }
}

impl Step {
    /// Starts or waits for a rebuild, or closes (which waits for one).
    fn rebuilds(&self) -> bool {
        matches!(self, Step::Compact | Step::Reopen)
    }

    /// Submits without waiting for the disk.
    fn does_not_wait(&self) -> bool {
        matches!(
            self,
            Step::SetNowait(_)
                | Step::RemoveNowait(_)
                | Step::SubmitDelta(_)
                | Step::Nested { commit: false, .. }
        )
    }
}

/// Runs a `Compact` with other steps during it, the same way on every run. The copy
/// thread is held at its sync of `P.backup` (R3, after the whole copy is written) while
/// `next` runs on this thread and its writes become durable in `P`; the rebuild then goes
/// on, and its writer-side steps append those writes to the backup (R3'). If `queued`
/// is not empty (steps that do not wait), the writer is held in turn at the backup's
/// sync there while they are submitted, so that after the rebuild they go to `P` in one
/// batch: a batch of several transactions. Returns the index of the step that failed
/// first (0: the compact, 1: `next`, 2...: `queued`) and its error.
///
/// # Panics
///
/// If the compact neither reaches a hold nor ends within [`SETTLE_LIMIT`].
fn compact_with<M: Kind>(
    db: &Db<M>,
    fs: &SimFs,
    next: &Step,
    queued: &[Step],
    model: &mut Model,
) -> Result<(), (usize, Error)> {
    let hold_sync = |nth| Fault {
        op: OpKind::SyncData,
        role: Some("P.backup"),
        nth,
        persistent: false,
        effect: Effect::Hold { fail: None },
    };
    fs.inject(hold_sync(1));
    if !queued.is_empty() {
        fs.inject(hold_sync(2));
    }
    let base = fs.holds_entered();
    let before = model.txns.len();
    let (compacted, held, during) = thread::scope(|s| {
        let compact = s.spawn(|| db.compact());
        let deadline = Instant::now() + SETTLE_LIMIT;
        // Waits for the `n`-th hold; a machine that died first ends the compact instead.
        let reach = |n: u64| loop {
            if fs.wait_holds(base + n, Duration::from_millis(1)) {
                return true;
            }
            if compact.is_finished() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "a compact neither reached hold {n} nor ended"
            );
        };
        let held = reach(1);
        let mut during = Vec::new();
        if held {
            during.push(run_step(db, next, model).and_then(|()| db.commit()));
        }
        fs.release();
        if held && !queued.is_empty() && during[0].is_ok() && reach(2) {
            for step in queued {
                let r = run_step(db, step, model);
                let failed = r.is_err();
                during.push(r);
                if failed {
                    break;
                }
            }
        }
        fs.release();
        let compacted = compact.join().unwrap_or_else(|p| panic::resume_unwind(p));
        (compacted, held, during)
    });
    fs.clear_holds();
    // The compact's own acknowledgement: everything submitted before it.
    compacted.map_err(|e| (0, e))?;
    model.ack_upto(before);
    if !held {
        run_step(db, next, model).map_err(|e| (1, e))?;
    }
    for (j, r) in during.into_iter().enumerate() {
        r.map_err(|e| (1 + j, e))?;
    }
    let ran = if held { 1 + queued.len() } else { 1 };
    for (j, step) in queued.iter().enumerate().skip(ran - 1) {
        run_step(db, step, model).map_err(|e| (2 + j, e))?;
    }
    Ok(())
}

fn one(model: &mut Model, k: u8, set: bool) -> (String, Option<u64>, Option<usize>) {
    let v = set.then(|| model.value());
    let i = model.submit(BTreeMap::from([(key(k), v)]));
    (key(k), v, i)
}

fn run_step<M: Kind>(db: &Db<M>, step: &Step, model: &mut Model) -> Result<(), Error> {
    match step {
        Step::Set(k) | Step::Remove(k) => {
            let (k, v, i) = one(model, *k, matches!(step, Step::Set(_)));
            match v {
                Some(v) => db.set(k, v)?,
                None => db.remove(&k)?,
            }
            model.ack(i);
        }
        Step::SetNowait(k) | Step::RemoveNowait(k) => {
            let set = matches!(step, Step::SetNowait(_));
            let v = set.then(|| model.value());
            match v {
                Some(v) => db.set_nowait(key(*k), v)?,
                None => db.remove_nowait(&key(*k))?,
            }
            model.submit(BTreeMap::from([(key(*k), v)]));
        }
        Step::Commit => {
            db.commit()?;
            model.ack_all();
        }
        Step::Delta(ops) | Step::SubmitDelta(ops) => {
            let ch = changes_of(model, ops);
            let d = delta_of(&ch)?;
            if matches!(step, Step::Delta(_)) {
                let i = model.submit(ch.into_iter().collect());
                db.commit_transaction(d)?;
                model.ack(i);
            } else {
                db.submit_transaction(d)?;
                model.submit(ch.into_iter().collect());
            }
        }
        Step::Nested {
            outer,
            inner,
            inner_end,
            commit,
        } => nested(db, model, outer, inner, *inner_end, *commit)?,
        Step::Transact(from, to) => {
            let v = model.value();
            let (from, to) = (key(*from), key(*to));
            let mut ch = BTreeMap::new();
            ch.insert(to.clone(), Some(v));
            if from != to {
                ch.insert(from.clone(), None);
            }
            let i = model.submit(ch);
            db.transact(|tx| -> Result<(), Error> {
                let _ = tx.get(&from);
                tx.set_nowait(to.clone(), v)?;
                if from != to {
                    tx.remove_nowait(&from)?;
                }
                Ok(())
            })?;
            model.ack(i);
        }
        Step::Compact => {
            db.compact()?;
            model.ack_all();
        }
        // `run_steps` closes and reopens: it owns the database.
        Step::Reopen => {}
    }
    Ok(())
}

fn nested<M: Kind>(
    db: &Db<M>,
    model: &mut Model,
    outer: &[(u8, bool)],
    inner: &[(u8, bool)],
    inner_end: u8,
    commit: bool,
) -> Result<(), Error> {
    let och = changes_of(model, outer);
    let ich = changes_of(model, inner);
    let mut merged: BTreeMap<String, Option<u64>> = och.iter().cloned().collect();
    if inner_end == 0 {
        merged.extend(ich.iter().cloned());
    }
    let tx = db.transaction();
    fill(&tx, &och);
    match inner_end {
        0 => {
            let t = tx.transaction();
            fill(&t, &ich);
        }
        1 => {
            let t = tx.transaction();
            fill(&t, &ich);
            t.rollback();
        }
        _ => {
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                let t = tx.transaction();
                fill(&t, &ich);
                panic::panic_any(IntendedPanic);
            }));
            debug_assert!(r.is_err());
        }
    }
    let i = model.submit(merged);
    if commit {
        tx.commit()?;
        model.ack(i);
    } else {
        drop(tx);
    }
    Ok(())
}

/// The state of an open database.
#[must_use]
pub fn state_of<M: Kind>(db: &Db<M>) -> State {
    db.snapshot().into_iter().collect()
}

/// What recovery may leave besides the six paths: nothing. Returns the stray paths.
#[must_use]
pub fn strays(fs: &SimFs) -> Vec<PathBuf> {
    let six: BTreeSet<PathBuf> = six_paths(&db_path()).into_iter().collect();
    fs.files()
        .into_keys()
        .filter(|p| !six.contains(p))
        .collect()
}

/// Opens the database on a copy of the crash state `crashed`, and checks it against
/// `model`: the open succeeds; the state is an allowed prefix; what recovery cut from `P`
/// was appended to `P.error` and nothing earlier in `P.error` changed; no file other than
/// the six; a clean close leaves `P` (and `P.error`) only; reopening finds the files clean
/// and the same state.
///
/// # Errors
///
/// A description of the first rule broken.
pub fn verify(crashed: &SimFs, model: &Model, opts: &Options) -> Result<Verified, String> {
    verify_as::<Hashed>(crashed, model, opts)
}

/// [`verify`] with the map `M`.
///
/// # Errors
///
/// As [`verify`].
pub fn verify_as<M: Kind>(
    crashed: &SimFs,
    model: &Model,
    opts: &Options,
) -> Result<Verified, String> {
    let [p, backup, recover, _, _, perr] = six_paths(&db_path());
    let fs = crashed.fork();
    if crashed.file(&recover).is_some()
        && crashed.file(&p).is_none()
        && crashed.file(&backup).is_none()
    {
        // A rename cut as ALICE's pessimistic model cuts it lost both names: the data is
        // gone with them, and the open must say so and keep the evidence.
        return match open_on_as::<M>(&fs, opts) {
            Err(Error::BadSideFile { path, .. })
                if path == recover && fs.files() == crashed.files() =>
            {
                Ok(Verified {
                    prefix: 0,
                    error_file: crashed.file(&perr).unwrap_or_default(),
                    report: ptvp35::RecoveryReport::default(),
                    refused: true,
                })
            }
            Err(e) => Err(format!("refused the flag without its files wrongly: {e}")),
            Ok(_) => Err("opened a database whose data both names lost".into()),
        };
    }
    let db = open_on_as::<M>(&fs, opts).map_err(|e| format!("recovery failed: {e} ({e:?})"))?;
    // The file that becomes `P`: the flagged backup, if there is one.
    let becomes_p = if crashed.file(&recover).is_some() && crashed.file(&backup).is_some() {
        &backup
    } else {
        &p
    };
    if let Some(want) = crashed.owner(becomes_p) {
        let got = fs.owner(&p);
        if got != Some(want) {
            return Err(format!(
                "recovery changed the main file's owner or mode: {want:?} became {got:?}"
            ));
        }
    }
    let got = state_of(&db);
    let k = model.check(&got)?;
    let report = db.recovery_report().clone();
    let old_err = crashed.file(&perr).unwrap_or_default();
    let new_err = fs.file(&perr).unwrap_or_default();
    if !new_err.starts_with(&old_err) {
        return Err("recovery changed what P.error held before".into());
    }
    let appended = &new_err[old_err.len()..];
    match db.recovery_report().cut {
        Some(ptvp35::Cut {
            offset: off, len, ..
        }) => {
            let main = crashed.file(&p).unwrap_or_default();
            let start = usize::try_from(off).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(len).unwrap_or(0));
            let Some(cut) = main.get(start..end) else {
                return Err(format!("report cut {off}+{len} outside P"));
            };
            // Zeros at either end (preallocated space, a size update without its data)
            // carry nothing; a fragment gets a newline so entries never run together.
            let first = cut.iter().position(|&b| b != 0).unwrap_or(cut.len());
            let keep = cut.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            let mut want = cut[first..keep.max(first)].to_vec();
            if !want.is_empty() && want.last() != Some(&b'\n') {
                want.push(b'\n');
            }
            if appended != want.as_slice() {
                return Err(format!(
                    "cut bytes {off}+{len} not appended to P.error: appended {}, cut {}",
                    shorten(appended),
                    shorten(cut)
                ));
            }
        }
        None if !appended.is_empty() => {
            return Err("P.error grew but the report shows no cut".into());
        }
        None => {}
    }
    let stray = strays(&fs);
    if !stray.is_empty() {
        return Err(format!("stray files after recovery: {stray:?}"));
    }
    db.close()
        .map_err(|e| format!("close after recovery: {e}"))?;
    let mut left: Vec<PathBuf> = fs.files().into_keys().collect();
    left.retain(|x| x != &perr);
    if left != [p.clone()] {
        return Err(format!("a clean close left {left:?}"));
    }
    let again = open_on_as::<M>(&fs, opts).map_err(|e| format!("second open: {e}"))?;
    if !again.recovery_report().was_clean() || state_of(&again) != got {
        return Err("reopening after a clean close changed the state".into());
    }
    again.close().map_err(|e| format!("second close: {e}"))?;
    Ok(Verified {
        refused: false,
        prefix: k,
        error_file: fs.file(&perr).unwrap_or_default(),
        report,
    })
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// How many submitted transactions the recovered state holds.
    pub prefix: usize,
    /// What `P.error` holds after recovery.
    pub error_file: Vec<u8>,
    /// The recovery report of the first open.
    pub report: ptvp35::RecoveryReport,
    /// The open was rightly refused: a rename cut in the middle lost both names of the
    /// data (ALICE's pessimistic model), and the flag was kept as evidence.
    pub refused: bool,
}

/// The owner and mode [`run_steps`] gives the main file once the database exists.
pub const WORKLOAD_OWNER: Owner = Owner {
    mode: 0o600,
    uid: 1000,
    gid: 1001,
};

/// At most 200 bytes of `b`, for messages.
fn shorten(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned();
    if b.len() > 200 {
        format!("{s:?}... ({} bytes)", b.len())
    } else {
        format!("{s:?}")
    }
}
