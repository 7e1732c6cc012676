//! Panics in user code at every call during a multi-key submit, then a power cut: the
//! recovered state holds all of the transaction or none of it, and everything that was
//! acknowledged. The user code is a key whose `Clone`, `Hash`, `Eq` and `Ord` (which the
//! ordered map calls instead of `Hash` and `Eq`), and a value whose `Clone` and
//! `Serialize`, panic on the n-th call on the submitting thread. `panics_ordered.rs` runs
//! it on the ordered map.

mod common;

use std::cell::Cell;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use anyhow::{ensure, Result};
use common::Map;
use ptvp35::{DbConnection, Delta, Options};
use ptvp35_testkit::{db_path, quiet_intended_panics, Fate, IntendedPanic, SimFs};
use serde::{Deserialize, Serialize, Serializer};

thread_local! {
    /// Calls of user code left before the armed panic (0: none armed).
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

fn arm(n: u32) {
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
            std::panic::panic_any(IntendedPanic);
        }
        n => c.set(n - 1),
    });
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct PKey(u32);

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

impl PartialOrd for PKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PKey {
    fn cmp(&self, other: &Self) -> Ordering {
        tick();
        self.0.cmp(&other.0)
    }
}

impl Hash for PKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        tick();
        self.0.hash(state);
    }
}

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

type PDb = DbConnection<PKey, PVal, Map>;

fn open(fs: &SimFs) -> Result<PDb> {
    Ok(Options::new()
        .filesystem(Arc::new(fs.clone()))
        .compact_ratio(f64::INFINITY)
        .open_as(db_path())?)
}

fn state(db: &PDb) -> Vec<(u32, u64)> {
    let mut v: Vec<(u32, u64)> = db.snapshot().iter().map(|(k, v)| (k.0, v.0)).collect();
    v.sort_unstable();
    v
}

#[test]
fn a_panic_in_user_code_during_a_submit_then_a_crash_leaves_all_or_none() -> Result<()> {
    // A regression may hang (a sequence number never sent): fail instead.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(panics_then_crash()));
    rx.recv_timeout(std::time::Duration::from_mins(2))
        .map_err(|_| anyhow::anyhow!("hung"))?
}

/// Most calls of user code the submit may run: the ordered map's runs about 110 (its
/// sort and searches call `Ord`), the hash map's a handful.
const MOST: u32 = 400;

fn panics_then_crash() -> Result<()> {
    quiet_intended_panics();
    for n in 1..=MOST {
        let fs = SimFs::new();
        let db = open(&fs)?;
        let mut base = Delta::new();
        for k in 0..10 {
            base.set(PKey(k), PVal(1))?;
        }
        db.commit_transaction(base)?;
        let before = state(&db);
        let mut d = Delta::new();
        for k in 5..15 {
            d.set(PKey(k), PVal(2))?;
        }
        d.remove(&PKey(0))?;
        let mut after = before.clone();
        after.retain(|&(k, _)| k != 0 && !(5..15).contains(&k));
        after.extend((5..15).map(|k| (k, 2)));
        after.sort_unstable();
        arm(n);
        let r = catch_unwind(AssertUnwindSafe(|| db.submit_transaction(d)));
        let fired = disarm();
        let shown = state(&db);
        ensure!(
            shown == before || shown == after,
            "call {n}: a torn transaction is visible: {shown:?}"
        );
        ensure!(fired || r.is_ok(), "call {n}: {r:?}");
        // Durable now: what the database shows must survive any power cut from here.
        db.commit()?;
        for (name, crashed) in [
            ("durable", fs.crash_durable()),
            ("all kept", fs.crash_with(|_, _| Fate::Keep)),
            ("seeded", fs.crash_seeded(u64::from(n))),
        ] {
            let again = open(&crashed)?;
            let got = state(&again);
            ensure!(
                got == shown,
                "call {n}, {name}: recovered {got:?}, acknowledged {shown:?}"
            );
            again.close()?;
        }
        db.close()?;
        if !fired {
            // Every call of user code in the submit has panicked in turn.
            ensure!(n > 5, "the submit ran too little user code to test");
            return Ok(());
        }
    }
    anyhow::bail!("the submit still runs user code after {MOST} calls: raise the bound")
}
