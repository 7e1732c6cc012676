//! Online backup under load: four threads write while `backup_to` copies; the copy opens
//! on its own, holds every write acknowledged before the call, and is one state of the
//! map (a transaction's two keys always agree in it).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{ensure, Result};
use common::{TempDir, TestDb};
use parking_lot::Mutex;
use ptvp35::{Error, Options};

type Db = TestDb<u32, u32>;

/// The two keys every transaction sets to one value.
const PAIR: (u32, u32) = (1_000_000, 2_000_003);

fn check_copy(copy: &Db, acked: &HashMap<u32, u32>) -> Result<()> {
    for (k, v) in acked {
        ensure!(
            copy.get(k) == Some(*v),
            "key {k}: {:?}, want {v}",
            copy.get(k)
        );
    }
    ensure!(
        copy.get(&PAIR.0) == copy.get(&PAIR.1),
        "a transaction was split: {:?} and {:?}",
        copy.get(&PAIR.0),
        copy.get(&PAIR.1)
    );
    Ok(())
}

#[test]
fn a_backup_under_four_writers_holds_every_acknowledged_write() -> Result<()> {
    let dir = TempDir::new("backup-load")?;
    let db = Options::new()
        .compact_floor(64 << 10)
        .open_as::<u32, u32, common::Kind>(dir.join("live.db"))?;
    let acked = Mutex::new(HashMap::new());
    let (stop, round) = (AtomicBool::new(false), AtomicU32::new(0));
    std::thread::scope(|s| -> Result<()> {
        for t in 0..4u32 {
            let (db, acked, stop) = (&db, &acked, &stop);
            s.spawn(move || -> Result<()> {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let k = t * 100_000 + i % 5_000;
                    if t == 3 {
                        let tx = db.transaction();
                        tx.set_nowait(PAIR.0, i)?;
                        tx.set_nowait(PAIR.1, i)?;
                        tx.commit()?;
                    } else {
                        db.set(k, i)?;
                        acked.lock().insert(k, i);
                    }
                    i += 1;
                }
                Ok(())
            });
        }
        let copies = (|| -> Result<()> {
            for n in 0..5 {
                std::thread::sleep(Duration::from_millis(30));
                let before = acked.lock().clone();
                let dest = dir.join(&format!("copy{n}.db"));
                db.backup_to(&dest)?;
                // Writers may have overwritten a key since; the copy keeps what was acked
                // at the call, or a later value of the same writer.
                let copy = Options::new()
                    .read_only(true)
                    .open_as::<u32, u32, common::Kind>(&dest)?;
                for (k, v) in &before {
                    let got = copy.get(k);
                    ensure!(
                        got.is_some_and(|g| g >= *v),
                        "key {k}: {got:?}, want >= {v}"
                    );
                }
                ensure!(
                    copy.get(&PAIR.0) == copy.get(&PAIR.1),
                    "a transaction was split"
                );
                round.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })();
        // Stop the writers whatever happened, or a failure would hang the scope.
        stop.store(true, Ordering::Relaxed);
        copies
    })?;
    ensure!(round.load(Ordering::Relaxed) == 5);
    // Once the writers stopped, a copy equals the database, and opens read-write too.
    db.backup_to(dir.join("last.db"))?;
    let copy = Db::open(dir.join("last.db"))?;
    ensure!(copy.snapshot() == db.snapshot());
    check_copy(&copy, &acked.lock())?;
    ensure!(copy.recovery_report().was_clean());
    copy.close()?;
    db.close()?;
    let names = dir.files()?;
    ensure!(
        names.iter().all(|n| !n.contains("tmp")),
        "a temporary file was left: {names:?}"
    );
    Ok(())
}

#[test]
fn a_read_only_handle_backs_up_what_it_shows_and_refuses_its_own_path() -> Result<()> {
    let dir = TempDir::new("backup-ro")?;
    let path = dir.join("d.db");
    let db = Db::open(&path)?;
    db.set(1, 10)?;
    let reader = Options::new()
        .read_only(true)
        .open_as::<u32, u32, common::Kind>(&path)?;
    db.set(2, 20)?;
    reader.backup_to(dir.join("copy.db"))?;
    let copy = Options::new()
        .read_only(true)
        .open_as::<u32, u32, common::Kind>(dir.join("copy.db"))?;
    ensure!(copy.snapshot() == HashMap::from([(1, 10)]));
    ensure!(matches!(
        db.backup_to(&path),
        Err(Error::Unsupported { .. })
    ));
    // A destination that is a database in use is refused too.
    let other = Db::open(dir.join("other.db"))?;
    ensure!(matches!(
        db.backup_to(dir.join("other.db")),
        Err(Error::Unsupported { .. })
    ));
    other.close()?;
    db.backup_to(dir.join("other.db"))?;
    ensure!(Db::open(dir.join("other.db"))?.len() == 2);
    db.close()?;
    Ok(())
}
