//! Many threads at once: disjoint writers, group commit, readers during writes.

mod common;

use anyhow::{ensure, Result};
use common::TempDir;
use ptvp35::DbConnection;

#[test]
fn eight_threads_setting_disjoint_keys_all_land() -> Result<()> {
    let dir = TempDir::new("disjoint")?;
    let p = dir.join("d.db");
    let db = DbConnection::<(u32, u32), String>::open(&p)?;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..8u32)
            .map(|t| {
                let db = &db;
                s.spawn(move || -> Result<()> {
                    for i in 0..200 {
                        db.set((t, i), format!("{t}/{i}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(())
    })?;
    db.close()?;
    let db = DbConnection::<(u32, u32), String>::open(&p)?;
    ensure!(db.len() == 1600);
    for t in 0..8 {
        for i in 0..200 {
            ensure!(
                db.get(&(t, i)) == Some(format!("{t}/{i}")),
                "({t}, {i}) lost"
            );
        }
    }
    db.close()?;
    Ok(())
}

#[test]
fn concurrent_durable_writes_share_syncs() -> Result<()> {
    let dir = TempDir::new("group")?;
    let db = DbConnection::<u32, u32>::open(dir.join("g.db"))?;
    let threads = 16;
    let per = 100;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let db = &db;
                s.spawn(move || -> Result<()> {
                    for i in 0..per {
                        db.set(t * 1000 + i, i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(())
    })?;
    let s = db.stats();
    ensure!(s.requests == u64::from(threads * per), "{s:?}");
    ensure!(s.syncs < s.requests, "no group commit happened: {s:?}");
    ensure!(s.batches == s.syncs, "one sync per batch: {s:?}");
    println!(
        "{} durable sets from {threads} threads in {} batches",
        s.requests, s.batches
    );
    db.close()?;
    Ok(())
}

#[test]
fn readers_never_see_half_a_transaction() -> Result<()> {
    let dir = TempDir::new("atomic")?;
    let db = DbConnection::<u32, u64>::open(dir.join("a.db"))?;
    let mut d = ptvp35::Delta::new();
    for k in 0..10 {
        d.set(k, 0)?;
    }
    db.commit_transaction(d)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> Result<()> {
        let reader = s.spawn(|| -> Result<u64> {
            let mut checks = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let snap = db.snapshot();
                let first = snap.get(&0).copied();
                ensure!(snap.values().all(|v| Some(*v) == first), "torn: {snap:?}");
                checks += 1;
            }
            Ok(checks)
        });
        for round in 1..=200u64 {
            let mut d = ptvp35::Delta::new();
            for k in 0..10 {
                d.set(k, round)?;
            }
            db.submit_transaction(d)?;
        }
        db.commit()?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let checks = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        ensure!(checks > 0);
        Ok(())
    })?;
    db.close()?;
    Ok(())
}
