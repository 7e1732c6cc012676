//! The ordered map and iteration over both maps: key order, ranges, prefixes, one
//! consistent state while writers go on, no lock held across the loop body, and
//! rebuilt files with the same bytes for the same data.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Result};
use common::{within, TempDir};
use ptvp35::{DbConnection, Delta, Hashed, MapKind, Options, Ordered};

type Ord64 = DbConnection<u64, String, Ordered>;

/// A fixed pseudo-random sequence (no dependency, same on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[test]
fn ranges_first_last_and_iteration_follow_a_btreemap_through_writes_and_reopens() -> Result<()> {
    let dir = TempDir::new("ord-model")?;
    let path = dir.join("o.db");
    let mut model = BTreeMap::new();
    let mut rng = Lcg(7);
    for round in 0..3 {
        let db: Ord64 = Options::new().open_ordered(&path)?;
        ensure!(db.iter().collect::<Vec<_>>() == model.clone().into_iter().collect::<Vec<_>>());
        for _ in 0..3000 {
            let k = rng.next() % 2000;
            match rng.next() % 4 {
                0 => {
                    db.remove_nowait(&k)?;
                    model.remove(&k);
                }
                1 => {
                    // A transaction over three keys, applied as one.
                    let mut d = Delta::new();
                    for j in 0..3 {
                        d.set(k + j * 7, format!("t{round}-{k}-{j}"))?;
                        model.insert(k + j * 7, format!("t{round}-{k}-{j}"));
                    }
                    db.submit_transaction(d)?;
                }
                _ => {
                    db.set_nowait(k, format!("v{round}-{k}"))?;
                    model.insert(k, format!("v{round}-{k}"));
                }
            }
        }
        db.commit()?;
        let all: Vec<_> = db.iter().collect();
        ensure!(all == model.clone().into_iter().collect::<Vec<_>>(), "iter");
        ensure!(db.first() == model.first_key_value().map(|(k, v)| (*k, v.clone())));
        ensure!(db.last() == model.last_key_value().map(|(k, v)| (*k, v.clone())));
        for _ in 0..50 {
            let a = rng.next() % 2100;
            let b = a + rng.next() % 300;
            let got: Vec<_> = db.range(a..b).collect();
            let want: Vec<_> = model.range(a..b).map(|(k, v)| (*k, v.clone())).collect();
            ensure!(got == want, "range {a}..{b}");
            let got: Vec<_> = db.range(a..=b).map(|(k, _)| k).collect();
            let want: Vec<_> = model.range(a..=b).map(|(k, _)| *k).collect();
            ensure!(got == want, "range {a}..={b}");
            let got: Vec<_> = db.range(..a).map(|(k, _)| k).collect();
            ensure!(got == model.range(..a).map(|(k, _)| *k).collect::<Vec<_>>());
            let got: Vec<_> = db.range(a..b).rev().map(|(k, _)| k).collect();
            let want: Vec<_> = model.range(a..b).rev().map(|(k, _)| *k).collect();
            ensure!(got == want, "reversed range {a}..{b}");
            let frozen = db.freeze();
            let lent: Vec<_> = frozen
                .range((Bound::Excluded(a), Bound::Unbounded))
                .take(5)
                .collect();
            let want: Vec<_> = model
                .range((Bound::Excluded(a), Bound::Unbounded))
                .take(5)
                .collect();
            ensure!(lent == want, "frozen range after {a}");
            ensure!(frozen.get(&a) == model.get(&a), "frozen get {a}");
            ensure!(frozen.len() == model.len());
        }
        if round == 1 {
            db.compact()?;
            ensure!(
                db.iter().map(|(k, _)| k).eq(model.keys().copied()),
                "after compact"
            );
        }
        db.close()?;
    }
    Ok(())
}

#[test]
fn string_keys_take_borrowed_bounds_and_prefixes() -> Result<()> {
    let dir = TempDir::new("ord-str")?;
    let db = Options::new().open_ordered::<String, u32>(dir.join("s.db"))?;
    for (i, k) in ["b/2", "a", "b/1", "b", "c", "b/10", "ba"]
        .iter()
        .enumerate()
    {
        db.set_nowait((*k).to_string(), u32::try_from(i)?)?;
    }
    db.commit()?;
    ensure!(db.get("b/1") == Some(2) && db.contains_key("ba") && !db.contains_key("zz"));
    let keys = |it: ptvp35::Iter<String, u32>| it.map(|(k, _)| k).collect::<Vec<_>>();
    ensure!(keys(db.scan_prefix("b/")) == ["b/1", "b/10", "b/2"]);
    ensure!(keys(db.scan_prefix("")).len() == 7);
    let (from, to) = (Bound::Included("b"), Bound::Excluded("b/2"));
    ensure!(keys(db.range::<str, _>((from, to))) == ["b", "b/1", "b/10"]);
    ensure!(keys(db.range("ba".to_string()..)) == ["ba", "c"]);
    db.remove("b/10")?;
    ensure!(keys(db.scan_prefix("b/")) == ["b/1", "b/2"]);
    db.close()?;
    Ok(())
}

/// Threads move amounts between 64 accounts in transactions (the total never changes);
/// every iteration must see the same total.
fn iteration_sees_whole_transactions<M: MapKind<u64, i64>>(
    open: impl Fn(&std::path::Path) -> ptvp35::Result<DbConnection<u64, i64, M>>,
    name: &str,
) -> Result<()> {
    const ACCOUNTS: u64 = 64;
    let dir = TempDir::new(name)?;
    let db = Arc::new(open(&dir.join("bank.db"))?);
    let mut opening = Delta::new();
    for account in 0..ACCOUNTS {
        opening.set(account, 1000)?;
    }
    db.commit_transaction(opening)?;
    let total = i64::try_from(ACCOUNTS)? * 1000;
    let stop = Arc::new(AtomicBool::new(false));
    let movers: Vec<_> = (0..2u64)
        .map(|seed| {
            let (db, stop) = (Arc::clone(&db), Arc::clone(&stop));
            std::thread::spawn(move || -> ptvp35::Result<u64> {
                let mut rng = Lcg(seed + 1);
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (from, to) = (rng.next() % ACCOUNTS, rng.next() % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    db.transact(|tx| -> ptvp35::Result<()> {
                        let have = tx.get(&from).unwrap_or(0);
                        let other = tx.get(&to).unwrap_or(0);
                        tx.set_nowait(from, have - 7)?;
                        tx.set_nowait(to, other + 7)?;
                        Ok(())
                    })?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut loops = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        let mut sum = 0;
        let mut seen = 0;
        for (_, v) in db.iter() {
            sum += v;
            seen += 1;
        }
        ensure!(
            seen == ACCOUNTS && sum == total,
            "a torn state: {seen} keys, sum {sum}"
        );
        loops += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut transfers = 0;
    for mover in movers {
        transfers += mover
            .join()
            .map_err(|_| anyhow::anyhow!("mover panicked"))??;
    }
    ensure!(
        transfers > 10 && loops > 10,
        "too little happened: {transfers} transfers, {loops} loops"
    );
    Ok(())
}

#[test]
fn an_ordered_iteration_sees_whole_transactions_while_writers_go_on() -> Result<()> {
    iteration_sees_whole_transactions::<Ordered>(|p| Options::new().open_ordered(p), "ord-iso")
}

#[test]
fn a_hashed_iteration_sees_whole_transactions_while_writers_go_on() -> Result<()> {
    iteration_sees_whole_transactions::<Hashed>(|p| Options::new().open(p), "hash-iso")
}

/// Inside a loop over an iterator, reads, writes and transactions on the same keys go
/// through while another thread writes too (no lock is held by the iterator).
fn writing_inside_a_loop<M: MapKind<u64, i64>>(db: DbConnection<u64, i64, M>) -> Result<()> {
    let db = Arc::new(db);
    for k in 0..500u64 {
        db.set_nowait(k, 0)?;
    }
    db.commit()?;
    let other = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || -> ptvp35::Result<()> {
            for k in 0..500u64 {
                db.set_nowait(k, -1)?;
            }
            db.commit()
        })
    };
    let seen = within(20, {
        let db = Arc::clone(&db);
        move || -> ptvp35::Result<usize> {
            let mut n = 0;
            for (k, v) in db.iter() {
                // What the iterator yields is its own state, whatever happens here.
                assert!(v == 0 || v == -1, "value {v}");
                let _ = db.get(&k);
                db.set(k, 1)?;
                db.transact(|tx| -> ptvp35::Result<()> {
                    let v = tx.get(&k).unwrap_or(0);
                    tx.set_nowait(k, v + 1)
                })?;
                n += 1;
            }
            Ok(n)
        }
    })??;
    other
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    ensure!(seen == 500, "{seen}");
    ensure!(db.iter().filter(|(_, v)| *v == 2).count() >= 1);
    Ok(())
}

#[test]
fn writes_inside_a_loop_over_an_ordered_iterator_never_deadlock() -> Result<()> {
    let dir = TempDir::new("ord-loop")?;
    writing_inside_a_loop(Options::new().open_ordered(dir.join("l.db"))?)
}

#[test]
fn writes_inside_a_loop_over_a_hashed_iterator_never_deadlock() -> Result<()> {
    let dir = TempDir::new("hash-loop")?;
    writing_inside_a_loop(Options::new().open(dir.join("l.db"))?)
}

#[test]
fn a_compacted_ordered_file_has_the_same_bytes_for_the_same_data() -> Result<()> {
    let dir = TempDir::new("ord-bytes")?;
    let mut files = Vec::new();
    for (n, seed) in [3u64, 11].into_iter().enumerate() {
        let path = dir.join(&format!("d{n}.db"));
        let db: Ord64 = Options::new().open_ordered(&path)?;
        // The same final data, reached in a different order with other writes between.
        let mut keys: Vec<u64> = (0..3000).collect();
        let mut rng = Lcg(seed);
        for i in (1..keys.len()).rev() {
            let j = usize::try_from(rng.next())? % (i + 1);
            keys.swap(i, j);
        }
        for &k in &keys {
            db.set_nowait(k, "old".into())?;
            db.set_nowait(k + 10_000, "gone".into())?;
        }
        for &k in &keys {
            db.set_nowait(k, format!("value {k}"))?;
            db.remove_nowait(&(k + 10_000))?;
        }
        db.commit()?;
        db.compact()?;
        db.close()?;
        files.push(std::fs::read(&path)?);
    }
    ensure!(files[0].len() > 3000 * 10, "the copy holds the pairs");
    ensure!(files[0] == files[1], "the same data gave different bytes");
    // And in key order.
    let text = String::from_utf8(files[0].clone())?;
    let keys: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["key"].as_u64())
        .collect();
    ensure!(keys.windows(2).all(|w| w[0] < w[1]) && keys.len() == 3000);
    Ok(())
}

#[test]
fn an_iterator_keeps_its_state_while_the_map_changes_under_it() -> Result<()> {
    let dir = TempDir::new("ord-frozen")?;
    let db: Ord64 = Options::new().open_ordered(dir.join("f.db"))?;
    for k in 0..1000u64 {
        db.set_nowait(k, "a".into())?;
    }
    db.commit()?;
    let mut it = db.range(100..);
    ensure!(it.next() == Some((100, "a".into())));
    // Splits, removals that empty leaves, replacements, after the iterator was made.
    for k in 0..1000u64 {
        if k % 3 == 0 {
            db.remove_nowait(&k)?;
        } else {
            db.set_nowait(k, "b".into())?;
        }
        db.set_nowait(k * 1000 + 1, "new".into())?;
    }
    db.commit()?;
    let rest: Vec<_> = it.collect();
    ensure!(rest.len() == 899 && rest.iter().all(|(k, v)| v == "a" && *k > 100 && *k < 1000));
    ensure!(db.range(100..1000).filter(|(_, v)| v == "a").count() == 0);
    db.close()?;
    Ok(())
}

#[test]
fn a_read_only_handle_and_a_backup_of_an_ordered_database_keep_the_order() -> Result<()> {
    let dir = TempDir::new("ord-ro")?;
    let db: Ord64 = Options::new().open_ordered(dir.join("o.db"))?;
    for k in (0..200u64).rev() {
        db.set_nowait(k, k.to_string())?;
    }
    db.commit()?;
    db.backup_to(dir.join("copy.db"))?;
    let reader: Ord64 = Options::new()
        .read_only(true)
        .open_ordered(dir.join("o.db"))?;
    ensure!(reader.range(10..13).map(|(k, _)| k).collect::<Vec<_>>() == [10, 11, 12]);
    db.set(1000, "late".into())?;
    reader.refresh()?;
    ensure!(reader.last() == Some((1000, "late".into())));
    let copy = std::fs::read_to_string(dir.join("copy.db"))?;
    let first: serde_json::Value = serde_json::from_str(copy.lines().next().unwrap_or("{}"))?;
    ensure!(
        first["key"] == 0,
        "the backup starts with the smallest key: {first}"
    );
    db.close()?;
    Ok(())
}

#[test]
fn a_large_transaction_in_any_key_order_lands_in_key_order() -> Result<()> {
    let dir = TempDir::new("ord-bulk")?;
    let db: Ord64 = Options::new().open_ordered(dir.join("b.db"))?;
    let mut model = BTreeMap::new();
    let mut rng = Lcg(99);
    for round in 0..3 {
        let mut d = Delta::new();
        for _ in 0..5000 {
            let k = rng.next() % 20_000;
            if rng.next().is_multiple_of(5) {
                d.remove(&k)?;
                model.remove(&k);
            } else {
                d.set(k, format!("r{round}"))?;
                model.insert(k, format!("r{round}"));
            }
        }
        db.commit_transaction(d)?;
        ensure!(db.iter().eq(model.clone()), "round {round}");
    }
    db.close()?;
    let db: Ord64 = Options::new().open_ordered(dir.join("b.db"))?;
    ensure!(db.iter().eq(model), "after a reopen");
    db.close()?;
    Ok(())
}
