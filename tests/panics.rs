//! User code that panics (`Clone`, `Hash`, `Eq`, `Serialize`, `Drop`) inside the engine's
//! calls: the database stays consistent (all of a transaction or none, in memory and on
//! disk) and nothing hangs. Also a panic on the writer thread and on a load thread.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::TempDir;
use ptvp35::DbConnection;
use serde::{Deserialize, Serialize};

/// Runs `f` on another thread and fails if it does not finish within ten seconds.
fn within_ten_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("hung for ten seconds")
}

/// The payload of the panics these tests raise on purpose.
struct Intended;

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

/// A value whose `Drop` panics once on the writer thread (armed by `DROP_ARMED`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
struct WVal(u64);

static WRITER_ARMED: AtomicBool = AtomicBool::new(false);

impl Drop for WVal {
    fn drop(&mut self) {
        let armed = match self.0 {
            4242 => &WRITER_ARMED,
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
    let db = std::sync::Arc::new(DbConnection::<u32, WVal>::open(&path)?);
    db.set(1, WVal(4242))?;
    WRITER_ARMED.store(true, Ordering::SeqCst);
    let d = std::sync::Arc::clone(&db);
    // The replaced value is dropped by the writer once this is durable.
    let first = within_ten_seconds(move || d.set(1, WVal(1)))?;
    let d = std::sync::Arc::clone(&db);
    let second = within_ten_seconds(move || d.set(2, WVal(2)))?;
    ensure!(
        first.is_err() || second.is_err(),
        "the writer's panic went unnoticed"
    );
    let d = std::sync::Arc::clone(&db);
    let third = within_ten_seconds(move || d.set(3, WVal(3)))?;
    ensure!(
        third.is_err(),
        "writes go on after the writer died: {third:?}"
    );
    ensure!(db.get(&3).is_none(), "a refused write is visible");
    let db = std::sync::Arc::into_inner(db).context("one owner")?;
    let closed = within_ten_seconds(move || db.close())?;
    ensure!(closed.is_err(), "close hides the writer's panic");
    // Reopening recovers what was acknowledged.
    let db = DbConnection::<u32, WVal>::open(&path)?;
    if first.is_ok() {
        ensure!(db.get(&1) == Some(WVal(1)));
    }
    db.close()?;
    Ok(())
}

/// A panic inside the `transact` closure submits nothing.
#[test]
fn a_panic_in_the_transact_closure_submits_nothing() -> Result<()> {
    quiet();
    let dir = TempDir::new("panic-transact")?;
    let db = DbConnection::<String, i64>::open(dir.join("t.db"))?;
    db.set("a".into(), 1)?;
    let r = catch_unwind(AssertUnwindSafe(|| {
        db.transact(|tx| -> Result<()> {
            tx.set_nowait("a".into(), 2)?;
            tx.set_nowait("b".into(), 2)?;
            std::panic::panic_any(Intended)
        })
    }));
    ensure!(r.is_err());
    ensure!(db.get(&"a".into()) == Some(1) && db.get(&"b".into()).is_none());
    within_ten_seconds(move || db.close())??;
    Ok(())
}
