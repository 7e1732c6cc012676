//! User code that the engine runs (iteration callbacks) calling back into the database:
//! it never runs while the engine holds the whole map, so nothing deadlocks.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::{within, TempDir, TestDb};

/// `for_each` held every shard's read lock across the callback, so a write from inside
/// it waited for itself (issue 9, item 12).
#[test]
fn a_write_inside_for_each_does_not_deadlock() -> Result<()> {
    let dir = TempDir::new("foreach-set")?;
    let db = Arc::new(TestDb::<String, i64>::open(dir.join("f.db"))?);
    for i in 0..20 {
        db.set_nowait(format!("k{i}"), i)?;
    }
    let d = Arc::clone(&db);
    let seen = within(10, move || -> Result<usize> {
        let mut seen = 0;
        let mut err = None;
        d.for_each(|k, v| {
            seen += 1;
            if let Err(e) = d.set_nowait(format!("{k}-copy"), *v) {
                err = Some(e);
            }
        });
        err.map_or(Ok(seen), |e| Err(e.into()))
    })??;
    ensure!(seen == 20, "for_each saw {seen} pairs");
    ensure!(db.len() == 40);
    Ok(())
}

/// A `get` inside `for_each` queued behind a writer waiting for a shard the iteration
/// held (fair locks), and the writer waited for the iteration (issue 9, item 12).
#[test]
fn a_read_inside_for_each_does_not_deadlock_against_a_writer() -> Result<()> {
    let dir = TempDir::new("foreach-get")?;
    let db = Arc::new(TestDb::<u32, u32>::open(dir.join("g.db"))?);
    for i in 0..256 {
        db.set_nowait(i, i)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (Arc::clone(&db), Arc::clone(&stop));
    let writer = std::thread::spawn(move || -> ptvp35::Result<()> {
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            d.set_nowait(n % 256, n)?;
            n += 1;
        }
        Ok(())
    });
    let d = Arc::clone(&db);
    let r = within(10, move || {
        for _ in 0..20 {
            d.for_each(|k, _| {
                std::thread::sleep(Duration::from_micros(50));
                let _ = d.get(&((k + 128) % 256));
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    r?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    Ok(())
}
