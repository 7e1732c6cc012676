//! The writer under faults that earlier tests did not reach: a sync that fails while
//! the request queue is full, a rebuild that keeps failing, and readers during the undo
//! of a failed batch. `writer_faults_ordered.rs` runs it on the ordered map.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{Map, TestDb};
use ptvp35::{Delta, Options};
use ptvp35_testkit::{db_path, open_on_as, Effect, Fault, OpKind, SimFs};

fn opts() -> Options {
    Options::new()
        .compact_ratio(f64::INFINITY)
        .preallocate(false)
}

fn within_ten_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("hung for ten seconds")
}

/// `compact` requests bypassed the queue's budget and filled the channel, so a
/// `set_nowait` blocked in `send` holding a shard lock and the order mutex; the failing
/// sync then needed that mutex to poison the store: everything, `close` included, hung
/// (issue 9, item 9).
#[test]
fn a_failed_sync_while_the_queue_is_full_does_not_hang() -> Result<()> {
    let fs = SimFs::new();
    // A short queue (`open_on` sets a long one).
    let db: TestDb = opts()
        .filesystem(Arc::new(fs.clone()))
        .queue_limits(4, 1 << 20)
        .open_as(db_path())?;
    let db = Arc::new(db);
    db.set("x".into(), 0)?;
    fs.inject(Fault {
        op: OpKind::SyncData,
        role: Some("P"),
        nth: 1,
        persistent: false,
        effect: Effect::Stall {
            ms: 500,
            kind: io::ErrorKind::Other,
        },
    });
    let d = Arc::clone(&db);
    let first = std::thread::spawn(move || d.set("a".into(), 1));
    std::thread::sleep(Duration::from_millis(100));
    let compacts: Vec<_> = (0..2)
        .map(|_| {
            let d = Arc::clone(&db);
            std::thread::spawn(move || d.compact())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let d = Arc::clone(&db);
    let rest = within_ten_seconds(move || {
        ["b", "c", "d", "e", "f"]
            .iter()
            .map(|k| d.set_nowait((*k).into(), 2))
            .collect::<Vec<_>>()
    })?;
    ensure!(rest.iter().any(Result::is_err), "{rest:?}");
    let r = within_ten_seconds(move || first.join())?;
    ensure!(r.is_ok_and(|r| r.is_err()), "the failed sync is reported");
    for c in compacts {
        let r = within_ten_seconds(move || c.join())?;
        ensure!(r.is_ok_and(|r| r.is_err()), "a rebuild of a poisoned store");
    }
    ensure!(db.get("x") == Some(0) && db.get("a").is_none());
    let db = Arc::into_inner(db).context("one owner")?;
    let closed = within_ten_seconds(move || db.close())?;
    ensure!(
        closed.as_ref().is_err_and(ptvp35::Error::is_poisoned),
        "{closed:?}"
    );
    Ok(())
}

/// A rebuild that keeps failing was started again after every batch: 200 sets started
/// dozens of failing rebuilds (issue 9, item 14).
#[test]
fn a_persistently_failing_rebuild_is_retried_a_few_times_only() -> Result<()> {
    let fs = SimFs::new();
    let db = open_on_as::<Map>(&fs, &opts().compact_ratio(1.0).compact_floor(0))?;
    fs.inject(Fault {
        op: OpKind::Create,
        role: Some("P.backup"),
        nth: 1,
        persistent: true,
        effect: Effect::Fail(io::ErrorKind::Other),
    });
    let tries = || {
        fs.trace()
            .iter()
            .filter(|t| t.kind == OpKind::Create && t.failed)
            .count()
    };
    db.set("a".into(), 0)?;
    db.set("a".into(), 1)?;
    // The first automatic rebuild runs on a thread of its own, which a loaded machine
    // may start late: wait for its attempt before counting the others.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tries() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    ensure!(tries() >= 1, "no automatic rebuild was tried");
    for i in 2..200 {
        db.set("a".into(), i)?;
    }
    ensure!(tries() <= 10, "{} failing rebuilds for 200 writes", tries());
    // An explicit rebuild is tried at once and reports the failure.
    ensure!(db.compact().is_err());
    fs.clear_faults();
    db.compact()?;
    db.close()?;
    Ok(())
}

/// The undo of a failed batch took each key's lock on its own, so a reader saw part of
/// a transaction undone and part not (issue 9, item 13).
#[test]
fn readers_never_see_half_an_undone_transaction() -> Result<()> {
    for round in 0..20u64 {
        let fs = SimFs::new();
        let db = Arc::new(open_on_as::<Map>(&fs, &opts())?);
        let mut d = Delta::new();
        for k in 0..400 {
            d.set(format!("k{k}"), 0)?;
        }
        db.commit_transaction(d)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&db), Arc::clone(&stop));
        let reader = std::thread::spawn(move || -> Result<u64> {
            let mut checks = 0;
            while !s.load(Ordering::Relaxed) {
                let snap = r.snapshot();
                let first = snap.get("k0").copied();
                ensure!(
                    snap.values().all(|v| Some(*v) == first),
                    "round {round}: torn state seen"
                );
                checks += 1;
            }
            Ok(checks)
        });
        fs.inject(Fault::eio(OpKind::SyncData, Some("P"), 1));
        let mut d = Delta::new();
        for k in 0..400 {
            d.set(format!("k{k}"), round + 1)?;
        }
        ensure!(db.commit_transaction(d).is_err());
        std::thread::sleep(Duration::from_millis(5));
        stop.store(true, Ordering::Relaxed);
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        ensure!(db.get("k399") == Some(0));
    }
    Ok(())
}

/// A rebuild flushes its copy as it writes it (every 8 MiB), so that the commits' syncs
/// never queue behind one flush of the whole copy: a copy of about 12 MiB is synced
/// while it is still being written.
#[test]
fn a_large_rebuild_syncs_its_copy_as_it_goes() -> Result<()> {
    let fs = SimFs::new();
    fs.make_dir(db_path().parent().context("no parent")?);
    let db: TestDb = open_on_as::<Map>(&fs, &opts())?;
    let pad = "k".repeat(1000);
    db.extend((0..12_000u64).map(|i| (format!("{pad}{i:06}"), i)))?;
    let before = fs.trace().len();
    db.compact()?;
    let trace = fs.trace();
    let backup = |p: &std::path::Path| p.to_string_lossy().ends_with(".backup");
    let rename = trace[before..]
        .iter()
        .position(|op| op.kind == OpKind::Rename && backup(&op.path))
        .context("no rename of the backup")?;
    let ops = &trace[before..before + rename];
    let last_write = ops
        .iter()
        .rposition(|op| op.kind == OpKind::Write && backup(&op.path))
        .context("no write to the backup")?;
    // Syncs with more of the copy written after them.
    let syncs = ops[..last_write]
        .iter()
        .filter(|op| op.kind == OpKind::SyncData && backup(&op.path))
        .count();
    ensure!(syncs >= 1, "no sync of the backup before its last write");
    db.close()?;
    Ok(())
}

/// Group commit: four threads committing one key at a time shared a sync two by two, as
/// each one released by a sync came back just after the writer had started the next
/// batch without it. The writer now holds a batch open for the committers it expects, so
/// they share each sync four by four; one thread alone never makes it wait.
#[test]
fn four_committers_share_each_sync_and_one_alone_never_waits() -> Result<()> {
    let fs = SimFs::new();
    fs.make_dir(db_path().parent().context("no parent")?);
    fs.set_sync_time(Duration::from_millis(10));
    let db: TestDb = open_on_as::<Map>(&fs, &opts().commit_wait(Duration::from_secs(1)))?;
    for i in 0..20 {
        db.set(format!("alone{i}"), i)?;
    }
    let alone = db.stats();
    ensure!(alone.commit_waits == 0, "one committer waited: {alone:?}");
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let db = &db;
                s.spawn(move || -> Result<()> {
                    for i in 0..40 {
                        db.set(format!("t{t}-{i}"), i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().expect("a committer panicked"))
    })?;
    let four = db.stats();
    let (requests, syncs) = (four.requests - alone.requests, four.syncs - alone.syncs);
    ensure!(requests == 160, "{four:?}");
    // Two by two, 80 syncs; four by four, 40 and a few for the start and the end.
    ensure!(syncs <= 53, "160 commits took {syncs} syncs: {four:?}");
    db.close()?;
    Ok(())
}
