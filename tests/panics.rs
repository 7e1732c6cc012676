//! User code that panics (`Clone`, `Hash`, `Eq`, `Serialize`, `Drop`) inside the engine's
//! calls: the database stays consistent (all of a transaction or none, in memory and on
//! disk) and nothing hangs. Also a panic on the writer thread and on a load thread.

mod common;

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{ensure, Context, Result};
use common::{within, SyncHookFs, TempDir, TestDb};
use ptvp35::{DbConnection, Delta, Hashed, MapKind, Options, Ordered};
use serde::{Deserialize, Serialize, Serializer};

/// The payload of the panics these tests raise on purpose.
struct Intended;

thread_local! {
    /// Calls of user code on this thread left before one panics (0: none will).
    static COUNTDOWN: Cell<u64> = const { Cell::new(0) };
}

/// Makes the `n`-th call of user code on this thread, from now on, panic.
fn arm(n: u64) {
    COUNTDOWN.with(|c| c.set(n));
}

/// Stops counting; returns whether the armed panic fired.
fn disarm() -> bool {
    COUNTDOWN.with(|c| c.replace(0)) == 0
}

fn tick() {
    COUNTDOWN.with(|c| match c.get() {
        0 => {}
        1 => {
            c.set(0);
            std::panic::panic_any(Intended);
        }
        n => c.set(n - 1),
    });
}

fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Intended>() {
                prev(info);
            }
        }));
    });
}

/// A key whose `Clone`, `Hash`, `Eq` and `Ord` count down to a panic.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct PKey(u32);

impl PartialOrd for PKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        tick();
        self.0.cmp(&other.0)
    }
}

impl Clone for PKey {
    fn clone(&self) -> Self {
        tick();
        PKey(self.0)
    }
}

impl PartialEq for PKey {
    fn eq(&self, other: &Self) -> bool {
        tick();
        self.0 == other.0
    }
}

impl Eq for PKey {}

impl Hash for PKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        tick();
        self.0.hash(state);
    }
}

/// A value whose `Clone`, `Serialize` and `Drop` count down to a panic.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(transparent)]
struct PVal(u64);

impl Clone for PVal {
    fn clone(&self) -> Self {
        tick();
        PVal(self.0)
    }
}

impl Serialize for PVal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        tick();
        s.serialize_u64(self.0)
    }
}

impl Drop for PVal {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            tick();
        }
    }
}

type PDb<M = Hashed> = DbConnection<PKey, PVal, M>;

fn state<M: MapKind<PKey, PVal>>(db: &PDb<M>) -> Vec<(u32, u64)> {
    let mut v: Vec<(u32, u64)> = db.snapshot().iter().map(|(k, v)| (k.0, v.0)).collect();
    v.sort_unstable();
    v
}

/// A panic at any call of user code during a multi-key submit left part of the
/// transaction applied and its number never sent to the writer, so `commit`, `compact`
/// and `close` hung and a later rebuild wrote the torn transaction (issue 9, item 10).
#[test]
fn a_panic_in_clone_hash_eq_or_drop_during_a_submit_changes_all_or_nothing() -> Result<()> {
    submit_all_or_nothing::<Hashed>()
}

/// The same with the ordered map, whose changes run `Ord`, and `Clone` when a leaf is
/// shared with an iterator that is alive (one is, here).
#[test]
fn a_panic_in_clone_ord_or_drop_during_a_submit_to_the_ordered_map_changes_all_or_nothing(
) -> Result<()> {
    submit_all_or_nothing::<Ordered>()
}

/// The same with a write that makes the hash map's shards regrow, which runs the user's
/// `Hash` on every key of a shard under its lock (the ordered map has nothing to regrow,
/// and runs the same write).
#[test]
fn a_panic_while_a_write_makes_the_shards_regrow_changes_all_or_nothing() -> Result<()> {
    let calls = (1..=40).chain((41..).step_by(97));
    submit_all_or_nothing_with::<Hashed>(0..1000, 900..1400, calls.clone())?;
    submit_all_or_nothing_with::<Ordered>(0..1000, 900..1400, calls.step_by(5))
}

fn submit_all_or_nothing<M: MapKind<PKey, PVal>>() -> Result<()> {
    submit_all_or_nothing_with::<M>(0..10, 5..15, 1..=200)
}

/// Arms a panic at each call in `calls` (until one does not fire) of a write that sets
/// `set` and removes the first key of `base` and an absent one, over a database of
/// `base`.
fn submit_all_or_nothing_with<M: MapKind<PKey, PVal>>(
    base: std::ops::Range<u32>,
    set: std::ops::Range<u32>,
    calls: impl Iterator<Item = u64>,
) -> Result<()> {
    quiet();
    let mut fired_somewhere = false;
    for n in calls {
        let dir = TempDir::new("panic-submit")?;
        let path = dir.join("p.db");
        let db: PDb<M> = Options::new().open_as(&path)?;
        let mut initial = Delta::new();
        for k in base.clone() {
            initial.set(PKey(k), PVal(1))?;
        }
        db.commit_transaction(initial)?;
        let before = state(&db);
        let mut d = Delta::new();
        for k in set.clone() {
            d.set(PKey(k), PVal(2))?;
        }
        d.remove(&PKey(base.start))?;
        d.remove(&PKey(u32::MAX))?;
        let mut after = before.clone();
        after.retain(|&(k, _)| k != base.start && !set.contains(&k));
        after.extend(set.clone().map(|k| (k, 2)));
        after.sort_unstable();
        // An iterator alive across the submit: the ordered map's leaves are shared.
        let held = db.iter();
        arm(n);
        let r = catch_unwind(AssertUnwindSafe(|| db.submit_transaction(d)));
        let fired = disarm();
        let seen: Vec<(u32, u64)> = held.map(|(k, v)| (k.0, v.0)).collect();
        let mut seen_sorted = seen.clone();
        seen_sorted.sort_unstable();
        ensure!(
            seen_sorted == before,
            "call {n}: the iterator's state changed"
        );
        fired_somewhere |= fired;
        let now = state(&db);
        ensure!(
            now == before || now == after,
            "call {n}: a torn transaction is visible: {} pairs, first unlike the state \
             before: {:?}",
            now.len(),
            now.iter().zip(&before).find(|(a, b)| a != b)
        );
        ensure!(fired || r.is_ok(), "call {n}: {r:?}");
        let shown = now.clone();
        within(10, move || -> Result<()> {
            db.commit()?;
            db.compact()?;
            ensure!(state(&db) == shown, "the rebuild changed the state");
            db.close()?;
            Ok(())
        })
        .with_context(|| format!("call {n}"))??;
        let db: PDb<M> = Options::new().open_as(&path)?;
        ensure!(state(&db) == now, "call {n}: the disk differs from memory");
        db.close()?;
        if !fired {
            ensure!(n > 5, "the submit ran too little user code to test");
            break;
        }
    }
    ensure!(fired_somewhere);
    Ok(())
}

/// A panic in `Serialize` (or in `Hash`/`Eq`) while a change was added to a delta left a
/// partial line in the delta's buffer, written to disk with the next submit.
#[test]
fn a_panic_while_adding_to_a_delta_leaves_it_as_it_was() -> Result<()> {
    quiet();
    for n in 1..=6 {
        let dir = TempDir::new("panic-delta")?;
        let path = dir.join("d.db");
        let db = PDb::<Hashed>::open(&path)?;
        let mut d = Delta::new();
        d.set(PKey(1), PVal(1))?;
        arm(n);
        let r = catch_unwind(AssertUnwindSafe(|| d.set(PKey(2), PVal(2))));
        let fired = disarm();
        ensure!(fired || r.is_ok());
        d.set(PKey(3), PVal(3))?;
        db.commit_transaction(d)?;
        let shown = state(&db);
        db.close()?;
        let db = PDb::<Hashed>::open(&path).with_context(|| format!("call {n}"))?;
        ensure!(
            state(&db) == shown,
            "call {n}: {:?} != {shown:?}",
            state(&db)
        );
        db.close()?;
    }
    Ok(())
}

/// A value whose `Drop` panics once on the writer thread (armed by `DROP_ARMED`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
struct WVal(u64);

static WRITER_ARMED: AtomicBool = AtomicBool::new(false);
static WRITER_ARMED_AGAIN: AtomicBool = AtomicBool::new(false);
static CALLER_ARMED: AtomicBool = AtomicBool::new(false);
static LOAD_ARMED: AtomicBool = AtomicBool::new(false);

impl Drop for WVal {
    fn drop(&mut self) {
        let armed = match self.0 {
            4242 => &WRITER_ARMED,
            4243 => &WRITER_ARMED_AGAIN,
            4244 => &CALLER_ARMED,
            7777 => &LOAD_ARMED,
            _ => return,
        };
        if !std::thread::panicking() && armed.swap(false, Ordering::SeqCst) {
            std::panic::panic_any(Intended);
        }
    }
}

/// A panic on the writer thread (here: dropping a replaced value once its write is
/// durable) left every waiter blocked forever (issue 9, item 11).
#[test]
fn a_panic_on_the_writer_thread_fails_waiters_and_later_writes() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-writer")?;
    let path = dir.join("w.db");
    let db = std::sync::Arc::new(TestDb::<u32, WVal>::open(&path)?);
    db.set(1, WVal(4242))?;
    WRITER_ARMED.store(true, Ordering::SeqCst);
    let d = std::sync::Arc::clone(&db);
    // The replaced value is dropped by the writer once this is durable (queued: a `set`
    // with the writer idle would write itself, and drop it on its own thread).
    let first = within(10, move || {
        d.set_nowait(1, WVal(1)).and_then(|()| d.commit())
    })?;
    let d = std::sync::Arc::clone(&db);
    let second = within(10, move || d.set(2, WVal(2)))?;
    ensure!(
        first.is_err() || second.is_err(),
        "the writer's panic went unnoticed"
    );
    let d = std::sync::Arc::clone(&db);
    let third = within(10, move || d.set(3, WVal(3)))?;
    ensure!(
        third.is_err(),
        "writes go on after the writer died: {third:?}"
    );
    ensure!(db.get(&3).is_none(), "a refused write is visible");
    let db = std::sync::Arc::into_inner(db).context("one owner")?;
    let closed = within(10, move || db.close())?;
    ensure!(closed.is_err(), "close hides the writer's panic");
    // Reopening recovers what was acknowledged.
    let db = TestDb::<u32, WVal>::open(&path)?;
    if first.is_ok() {
        ensure!(db.get(&1) == Some(WVal(1)));
    }
    db.close()?;
    Ok(())
}

/// A commit that its caller's thread wrote itself (one committer, the writer idle) drops
/// the value it replaced on that thread, once durable: a panic there reaches the caller
/// as any panic of its own code would, and the write stays, in memory and on disk, with
/// the database open for more.
#[test]
fn a_panic_dropping_what_a_lone_commit_replaced_reaches_its_caller() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-lone")?;
    let path = dir.join("w.db");
    let db = TestDb::<u32, WVal>::open(&path)?;
    db.set(1, WVal(4244))?;
    CALLER_ARMED.store(true, Ordering::SeqCst);
    let (db, panicked) = within(10, move || {
        let r = catch_unwind(AssertUnwindSafe(|| db.set(1, WVal(1))));
        (db, r.err().is_some_and(|p| p.is::<Intended>()))
    })?;
    ensure!(
        panicked,
        "the replaced value's panic did not reach the caller of `set`"
    );
    ensure!(db.get(&1) == Some(WVal(1)), "the write is not in memory");
    db.set(2, WVal(2))?;
    db.close()?;
    let db = TestDb::<u32, WVal>::open(&path)?;
    ensure!(db.get(&1) == Some(WVal(1)) && db.get(&2) == Some(WVal(2)));
    db.close()?;
    Ok(())
}

/// After the writer thread panicked, writes still queued behind the batch it was on
/// stayed applied in memory though they never reached the disk: readers saw state that
/// a reopen does not show.
#[test]
fn after_a_panic_on_the_writer_thread_memory_matches_the_disk() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-writer-undo")?;
    let path = dir.join("w.db");
    let db = TestDb::<u32, WVal>::open(&path)?;
    db.set(1, WVal(4243))?;
    WRITER_ARMED_AGAIN.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for k in 1..2000 {
        if db.set_nowait(k, WVal(u64::from(k))).is_err() {
            break;
        }
        sent += 1;
    }
    let (shown, closed) = within(10, move || {
        let committed = db.commit();
        let mut shown: Vec<(u32, u64)> = db.snapshot().iter().map(|(k, v)| (*k, v.0)).collect();
        shown.sort_unstable();
        (shown, committed.and(db.close()))
    })?;
    ensure!(
        closed.is_err(),
        "the writer's panic went unnoticed ({sent} sent)"
    );
    let db = TestDb::<u32, WVal>::open(&path)?;
    let mut durable: Vec<(u32, u64)> = db.snapshot().iter().map(|(k, v)| (*k, v.0)).collect();
    durable.sort_unstable();
    ensure!(
        durable == shown,
        "memory showed {} keys, the disk holds {}",
        shown.len(),
        durable.len()
    );
    db.close()?;
    Ok(())
}

/// A panic on a load thread at open was swallowed (`join().unwrap_or(0)`) and the open
/// succeeded with part of the map missing (issue 9, item 11).
#[test]
fn a_panic_while_loading_fails_the_open() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-load")?;
    let path = dir.join("l.db");
    let db = TestDb::<u32, WVal>::open(&path)?;
    for k in 0..64 {
        db.set_nowait(k, WVal(7777))?;
    }
    for k in 0..64 {
        db.set_nowait(k, WVal(1))?;
    }
    db.close()?;
    LOAD_ARMED.store(true, Ordering::SeqCst);
    // Loading replaces each 7777 by 1 and drops it: the first such drop panics.
    let r = catch_unwind(|| TestDb::<u32, WVal>::open(&path).map(|db| db.len()));
    LOAD_ARMED.store(false, Ordering::SeqCst);
    match r {
        Ok(Err(e)) => {
            let text = e.to_string();
            ensure!(text.contains("panic"), "{text}");
        }
        Ok(Ok(len)) => anyhow::bail!("opened with {len} keys after a panic while loading"),
        Err(_) => anyhow::bail!("the open panicked instead of failing"),
    }
    let db = TestDb::<u32, WVal>::open(&path)?;
    ensure!(db.len() == 64);
    db.close()?;
    Ok(())
}

/// A value whose `Serialize` or `Deserialize` panics once, when armed.
#[derive(Debug, Clone, PartialEq)]
struct SVal(u64);

static SERIALIZE_ARMED: AtomicBool = AtomicBool::new(false);
static DESERIALIZE_ARMED: AtomicBool = AtomicBool::new(false);

impl Serialize for SVal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 9999 && SERIALIZE_ARMED.swap(false, Ordering::SeqCst) {
            std::panic::panic_any(Intended);
        }
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for SVal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == 9999 && DESERIALIZE_ARMED.swap(false, Ordering::SeqCst) {
            std::panic::panic_any(Intended);
        }
        Ok(SVal(v))
    }
}

/// A panic on the rebuild thread (a value's `Serialize`) was reported as
/// [`ptvp35::Error::Closed`], and one while parsing the file at open (a value's
/// `Deserialize`) unwound out of `open` when the file was small enough to be parsed on
/// the caller's thread.
#[test]
fn a_panic_while_rebuilding_or_parsing_is_an_internal_error() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-rebuild")?;
    let path = dir.join("s.db");
    let db = std::sync::Arc::new(TestDb::<u32, SVal>::open(&path)?);
    db.set(1, SVal(9999))?;
    db.set(2, SVal(2))?;
    SERIALIZE_ARMED.store(true, Ordering::SeqCst);
    let d = std::sync::Arc::clone(&db);
    let r = within(10, move || d.compact())?;
    ensure!(matches!(r, Err(ptvp35::Error::Internal { .. })), "{r:?}");
    // Nothing vouched for the copy: the database goes on.
    db.set(3, SVal(3))?;
    db.compact()?;
    let db = std::sync::Arc::into_inner(db).context("one owner")?;
    db.close()?;
    DESERIALIZE_ARMED.store(true, Ordering::SeqCst);
    let r = catch_unwind(|| TestDb::<u32, SVal>::open(&path).map(|db| db.len()));
    DESERIALIZE_ARMED.store(false, Ordering::SeqCst);
    ensure!(
        matches!(r, Ok(Err(ptvp35::Error::Internal { .. }))),
        "{:?}",
        r.map_err(|_| "open panicked")
    );
    let db = TestDb::<u32, SVal>::open(&path)?;
    ensure!(db.len() == 3);
    db.close()?;
    Ok(())
}

/// A panic inside the `transact` closure submits nothing.
#[test]
fn a_panic_in_the_transact_closure_submits_nothing() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-transact")?;
    let db = TestDb::<String, i64>::open(dir.join("t.db"))?;
    db.set("a".into(), 1)?;
    let r = catch_unwind(AssertUnwindSafe(|| {
        db.transact(|tx| -> Result<()> {
            tx.set_nowait("a".into(), 2)?;
            tx.set_nowait("b".into(), 2)?;
            std::panic::panic_any(Intended)
        })
    }));
    ensure!(r.is_err());
    ensure!(db.get("a") == Some(1) && db.get("b").is_none());
    within(10, move || db.close())??;
    Ok(())
}

/// A panic in user code inside a submit (here the `Eq` of a key already there) kept the
/// room the write had taken in the queue's budget: after as many panics as the queue has
/// slots, every later write waited forever for room.
#[test]
fn panics_inside_submits_give_their_room_in_the_queue_back() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-budget")?;
    let db = std::sync::Arc::new(
        Options::new()
            .queue_limits(2, 1 << 20)
            .open_as::<PKey, PVal, common::Kind>(dir.join("b.db"))?,
    );
    db.set(PKey(1), PVal(1))?;
    let d = std::sync::Arc::clone(&db);
    within(20, move || -> Result<()> {
        for _ in 0..5 {
            let mut delta = Delta::new();
            delta.set(PKey(1), PVal(2))?;
            arm(1);
            let r = catch_unwind(AssertUnwindSafe(|| d.submit_transaction(delta)));
            let fired = disarm();
            ensure!(fired && r.is_err(), "the submit ran no user code: {r:?}");
        }
        d.set(PKey(5), PVal(5))?;
        Ok(())
    })
    .context("writes after panics in submits")??;
    ensure!(db.get(&PKey(5)) == Some(PVal(5)));
    Ok(())
}

/// A large write to the ordered map is sorted by key before any lock; an `Ord` that
/// panics there changes nothing.
#[test]
fn a_panic_while_a_large_write_to_the_ordered_map_is_sorted_changes_nothing() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-sort")?;
    let db: PDb<Ordered> = Options::new().open_ordered(dir.join("s.db"))?;
    db.set(PKey(1), PVal(1))?;
    let before = state(&db);
    let mut d = Delta::new();
    for k in (0..3000u32).rev() {
        d.set(PKey(k * 7 % 3001), PVal(2))?;
    }
    arm(100);
    let r = catch_unwind(AssertUnwindSafe(|| db.submit_transaction(d)));
    let fired = disarm();
    ensure!(fired && r.is_err(), "no panic: {r:?}");
    ensure!(
        state(&db) == before,
        "a panic before any lock changed the map"
    );
    db.set(PKey(2), PVal(2))?;
    db.close()?;
    Ok(())
}

/// A panic of user code while the caller's thread writes its own commit (here: a custom
/// file system's sync of the main file) poisons the database as one on the writer
/// thread does: the caller gets the panic, the write is undone in memory and cut from
/// the file, later writes are refused, `close` reports it, and a reopen shows the state
/// without it.
#[test]
fn a_panic_in_the_file_system_during_a_lone_commit_poisons_the_database() -> Result<()> {
    file_system_panics_while_syncing(false)
}

/// The same on the writer thread: the waiter fails, and the batch that was written but
/// not synced is cut, or a reopen in this process reads it back from the page cache,
/// whole, and shows a write whose caller was told it failed.
#[test]
fn a_panic_in_the_file_system_on_the_writer_thread_poisons_the_database() -> Result<()> {
    file_system_panics_while_syncing(true)
}

fn file_system_panics_while_syncing(queued: bool) -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-fs")?;
    let path = dir.join("f.db");
    let armed = std::sync::Arc::new(AtomicBool::new(false));
    let arm = std::sync::Arc::clone(&armed);
    let fs = SyncHookFs::new(move |p: &std::path::Path| {
        if p.extension().is_some_and(|e| e == "db") && arm.swap(false, Ordering::SeqCst) {
            std::panic::panic_any(Intended);
        }
    });
    let opts = Options::new().filesystem(std::sync::Arc::new(fs));
    let db = opts.open_as::<u32, u64, common::Kind>(&path)?;
    db.set(1, 1)?;
    armed.store(true, Ordering::SeqCst);
    let (db, failed) = within(10, move || {
        let r = catch_unwind(AssertUnwindSafe(|| {
            if queued {
                db.set_nowait(2, 2).and_then(|()| db.commit())
            } else {
                db.set(2, 2)
            }
        }));
        let failed = match r {
            // On the writer thread: the waiter hears of it.
            Ok(r) => queued && r.is_err(),
            // On the caller's thread: the caller gets the panic.
            Err(p) => !queued && p.is::<Intended>(),
        };
        (db, failed)
    })?;
    ensure!(failed, "the file system's panic went unnoticed");
    ensure!(
        db.get(&2).is_none(),
        "the write that failed is still in memory"
    );
    let (db, later) = within(10, move || {
        let r = db.set(3, 3);
        (db, r)
    })?;
    ensure!(later.is_err(), "writes go on after the panic: {later:?}");
    ensure!(db.get(&3).is_none(), "a refused write is visible");
    let closed = within(10, move || db.close())?;
    ensure!(closed.is_err(), "close hides the panic");
    let db = TestDb::<u32, u64>::open(&path)?;
    ensure!(
        db.get(&1) == Some(1) && db.get(&2).is_none() && db.len() == 1,
        "reopened: {:?} {:?}, {} keys",
        db.get(&1),
        db.get(&2),
        db.len()
    );
    db.close()?;
    Ok(())
}
