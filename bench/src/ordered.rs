//! The ordered map (issue 12): range scans and full iteration against redb's and sled's
//! `range` and a `BTreeMap` behind a lock (the limit); point reads, bulk load and open of
//! the ordered map against the hash map; and what an iteration costs the writers.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ptvp35::{DbConnection, Delta, Hashed, MapKind, Options, Ordered};
use redb::ReadableDatabase;

use crate::data::{key, val, Hist, Rng, Summary, Val};
use crate::report::{num, ratio, secs, sum, Table};
use crate::workloads::Cfg;

const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");

fn json(v: &Val) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn fresh(p: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(p);
    std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))
}

/// Loads `n` keys into a ptvp35 database in one transaction; the load time.
fn load_ptvp35<M: MapKind<String, Val>>(
    path: &Path,
    n: u64,
) -> Result<(DbConnection<String, Val, M>, f64)> {
    let db: DbConnection<String, Val, M> = Options::new().open_as(path)?;
    let t = Instant::now();
    let mut d = Delta::with_capacity(usize::try_from(n)?, usize::try_from(n)? * 140);
    for i in 0..n {
        d.set(key(i), val(i, 0))?;
    }
    db.commit_transaction(d)?;
    Ok((db, t.elapsed().as_secs_f64()))
}

/// Closes and reopens; the open time.
fn reopen<M: MapKind<String, Val>>(
    db: DbConnection<String, Val, M>,
) -> Result<(DbConnection<String, Val, M>, f64)> {
    let path = db.path().to_path_buf();
    db.close()?;
    let t = Instant::now();
    let db: DbConnection<String, Val, M> = Options::new().open_as(&path)?;
    Ok((db, t.elapsed().as_secs_f64()))
}

/// Runs `scan` (one range scan from a random start) for `secs`; scans per second.
fn rate(secs: f64, seed: u64, mut scan: impl FnMut(&mut Rng) -> Result<usize>) -> Result<f64> {
    let mut rng = Rng::new(seed);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        black_box(scan(&mut rng)?);
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The worst and 99th-percentile commit of a thread that sets keys while `busy` runs
/// (or for the same time with nothing else, if `busy` is `None`).
fn commit_latency<M: MapKind<String, Val>>(
    db: &DbConnection<String, Val, M>,
    n: u64,
    busy: Option<&(dyn Fn() -> Result<()> + Sync)>,
    secs: f64,
) -> Result<(f64, f64)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<(f64, f64)> {
        let writer = s.spawn(|| -> Result<Hist> {
            let mut h = Hist::default();
            let mut rng = Rng::new(9);
            while !stop.load(Ordering::Relaxed) {
                let i = rng.below(n);
                let t = Instant::now();
                db.set(key(i), val(i, 1))?;
                h.record(t.elapsed());
            }
            Ok(h)
        });
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < secs {
            match busy {
                Some(f) => f()?,
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let h = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok((h.pct(0.99), h.max_secs()))
    })
}

/// Durable `set`s per second from `threads` threads for `secs`.
fn commit_rate<M: MapKind<String, Val>>(
    db: &DbConnection<String, Val, M>,
    n: u64,
    threads: u64,
    secs: f64,
) -> Result<f64> {
    let t = Instant::now();
    let done = std::thread::scope(|s| -> Result<u64> {
        let workers: Vec<_> = (0..threads)
            .map(|seed| {
                s.spawn(move || -> Result<u64> {
                    let mut rng = Rng::new(seed + 100);
                    let mut c = 0;
                    while t.elapsed().as_secs_f64() < secs {
                        let i = rng.below(n);
                        db.set(key(i), val(i, 2))?;
                        c += 1;
                    }
                    Ok(c)
                })
            })
            .collect();
        let mut total = 0;
        for w in workers {
            total += w
                .join()
                .map_err(|_| anyhow::anyhow!("committer panicked"))??;
        }
        Ok(total)
    })?;
    Ok(done as f64 / t.elapsed().as_secs_f64())
}

#[allow(clippy::too_many_lines)]
pub fn ordered(cfg: &Cfg) -> Result<()> {
    let n = cfg.bulk_keys;
    let dir = cfg.dir.join("ordered");
    fresh(&dir)?;
    let keys: Vec<String> = (0..n).map(key).collect();

    // Bulk load and open, each map in turn, every repetition.
    let (mut load_h, mut load_o, mut open_h, mut open_o) = (vec![], vec![], vec![], vec![]);
    let mut hashed: Option<DbConnection<String, Val, Hashed>> = None;
    let mut ordered: Option<DbConnection<String, Val, Ordered>> = None;
    for rep in 0..cfg.reps {
        for which in ["hashed", "ordered"] {
            let path = dir.join(format!("{which}.db"));
            // A closed database is its main file alone.
            if which == "hashed" {
                if let Some(db) = hashed.take() {
                    db.close()?;
                }
            } else if let Some(db) = ordered.take() {
                db.close()?;
            }
            let _ = std::fs::remove_file(&path);
            if which == "hashed" {
                let (db, l) = load_ptvp35::<Hashed>(&path, n)?;
                let (db, o) = reopen(db)?;
                eprintln!("  ordered: hashed rep {rep}: load {l:.2} s, open {o:.2} s");
                load_h.push(l);
                open_h.push(o);
                hashed = Some(db);
            } else {
                let (db, l) = load_ptvp35::<Ordered>(&path, n)?;
                let (db, o) = reopen(db)?;
                eprintln!("  ordered: ordered rep {rep}: load {l:.2} s, open {o:.2} s");
                load_o.push(l);
                open_o.push(o);
                ordered = Some(db);
            }
        }
    }
    let hashed = hashed.context("no hashed database")?;
    let ordered = ordered.context("no ordered database")?;

    // The peers and the limit, loaded once.
    let rdb = redb::Database::create(dir.join("data.redb"))?;
    {
        let tx = rdb.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            for i in 0..n {
                t.insert(
                    keys[usize::try_from(i)?].as_str(),
                    json(&val(i, 0)).as_slice(),
                )?;
            }
        }
        tx.commit()?;
    }
    let sdb = sled::open(dir.join("sled"))?;
    {
        let mut b = sled::Batch::default();
        for i in 0..n {
            b.insert(keys[usize::try_from(i)?].as_bytes(), json(&val(i, 0)));
        }
        sdb.apply_batch(b)?;
        sdb.flush()?;
    }
    let limit: RwLock<BTreeMap<String, Val>> =
        RwLock::new((0..n).map(|i| (key(i), val(i, 0))).collect());

    // Range scans of 100 and 10,000 keys from a random start, 1 thread.
    let start = |rng: &mut Rng, len: u64| &keys[usize::try_from(rng.below(n - len)).unwrap_or(0)];
    let mut scan_rows: Vec<(&str, [Vec<f64>; 2])> = vec![
        ("ptvp35 ordered `range` (clones)", [vec![], vec![]]),
        ("ptvp35 ordered `freeze().range` (lends)", [vec![], vec![]]),
        ("redb `range`", [vec![], vec![]]),
        ("sled `range` ¹", [vec![], vec![]]),
        ("BTreeMap behind a RwLock (limit)", [vec![], vec![]]),
    ];
    for rep in 0..cfg.reps {
        for (li, len) in [100u64, 10_000].into_iter().enumerate() {
            let take = usize::try_from(len)?;
            let secs = cfg.read_secs;
            let seed = rep as u64;
            let r = [
                rate(secs, seed, |rng| {
                    Ok(ordered.range(start(rng, len).clone()..).take(take).count())
                })?,
                rate(secs, seed, |rng| {
                    let frozen = ordered.freeze();
                    Ok(frozen
                        .range::<str, _>((
                            std::ops::Bound::Included(start(rng, len).as_str()),
                            std::ops::Bound::Unbounded,
                        ))
                        .take(take)
                        .fold(0, |n, kv| {
                            black_box(kv);
                            n + 1
                        }))
                })?,
                rate(secs, seed, |rng| {
                    let r = rdb.begin_read()?;
                    let t = r.open_table(TABLE)?;
                    let mut c = 0;
                    for e in t.range(start(rng, len).as_str()..)?.take(take) {
                        let (k, v) = e?;
                        black_box((k.value().to_owned(), v.value().to_vec()));
                        c += 1;
                    }
                    Ok(c)
                })?,
                rate(secs, seed, |rng| {
                    let mut c = 0;
                    for e in sdb.range(start(rng, len).as_bytes()..).take(take) {
                        black_box(e?);
                        c += 1;
                    }
                    Ok(c)
                })?,
                rate(secs, seed, |rng| {
                    let m = limit.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    Ok(m.range(start(rng, len).clone()..)
                        .take(take)
                        .fold(0, |n, (k, v)| {
                            black_box((k.clone(), v.clone()));
                            n + 1
                        }))
                })?,
            ];
            for (row, x) in scan_rows.iter_mut().zip(r) {
                row.1[li].push(x);
            }
            eprintln!("  ordered: range {len} rep {rep}: {r:?}");
        }
    }
    let mut tab = Table::new(
        &format!("Range scans on {} keys, 1 thread", num(n as f64)),
        &[
            "store",
            "100-key scans/s",
            "÷ ptvp35",
            "10k-key scans/s",
            "÷ ptvp35",
        ],
    );
    let base = |li: usize| Summary::of(&scan_rows[0].1[li]).med;
    for (label, cols) in &scan_rows {
        let mut cells = vec![(*label).to_owned()];
        for (li, c) in cols.iter().enumerate() {
            let s = Summary::of(c);
            cells.push(sum(s, num));
            cells.push(ratio(s.med, base(li)));
        }
        tab.row(cells);
    }
    tab.notes.push(format!(
        "{:.1} s per run, {} repetitions, a uniformly random start key. ptvp35's `range` and the \
         BTreeMap hand out cloned typed values, `freeze().range` lends them (no copy); redb and \
         sled hand out the raw bytes (a copy, no deserialization). ¹ sled is not power-safe (see the commits table).",
        cfg.read_secs, cfg.reps
    ));
    tab.print();

    // Point reads: ordered against hashed, 1 thread.
    let mut reads: [Vec<f64>; 2] = [vec![], vec![]];
    for rep in 0..cfg.reps {
        let h = rate(cfg.read_secs, rep as u64, |rng| {
            Ok(usize::from(
                hashed.get(&keys[usize::try_from(rng.below(n))?]).is_some(),
            ))
        })?;
        let o = rate(cfg.read_secs, rep as u64, |rng| {
            Ok(usize::from(
                ordered.get(&keys[usize::try_from(rng.below(n))?]).is_some(),
            ))
        })?;
        reads[0].push(h);
        reads[1].push(o);
    }

    // Full iterations, and the commits of a writer meanwhile.
    let mut full: [Vec<f64>; 3] = [vec![], vec![], vec![]];
    for _ in 0..cfg.reps {
        let t = Instant::now();
        black_box(hashed.iter().count());
        full[0].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(ordered.iter().count());
        full[1].push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        {
            let m = limit.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
            black_box(m.iter().fold(0, |n, (k, v)| {
                black_box((k.clone(), v.clone()));
                n + 1
            }));
        }
        full[2].push(t.elapsed().as_secs_f64());
    }
    // Durable commits/s from 1 and 4 threads, each setting random keys.
    let mut commits: [[Vec<f64>; 2]; 2] = Default::default();
    for _ in 0..cfg.reps {
        for (ti, threads) in [1u64, 4].into_iter().enumerate() {
            commits[ti][0].push(commit_rate(&hashed, n, threads, cfg.commit_secs)?);
            commits[ti][1].push(commit_rate(&ordered, n, threads, cfg.commit_secs)?);
        }
    }
    let secs_lat = if cfg.quick { 1.0 } else { 3.0 };
    let iterate_h = || -> Result<()> {
        black_box(hashed.iter().count());
        Ok(())
    };
    let iterate_o = || -> Result<()> {
        black_box(ordered.iter().count());
        Ok(())
    };
    let quiet_h = commit_latency(&hashed, n, None, secs_lat)?;
    let busy_h = commit_latency(&hashed, n, Some(&iterate_h), secs_lat)?;
    let quiet_o = commit_latency(&ordered, n, None, secs_lat)?;
    let busy_o = commit_latency(&ordered, n, Some(&iterate_o), secs_lat)?;

    let mut tab = Table::new(
        &format!(
            "The ordered map against the hash map, {} keys",
            num(n as f64)
        ),
        &["measure", "hash map", "ordered map", "ordered ÷ hash"],
    );
    let med = |v: &[f64]| Summary::of(v).med;
    let row = |tab: &mut Table, what: &str, h: &[f64], o: &[f64], f: fn(f64) -> String| {
        tab.row(vec![
            what.to_owned(),
            sum(Summary::of(h), f),
            sum(Summary::of(o), f),
            ratio(med(o), med(h)),
        ]);
    };
    row(
        &mut tab,
        "bulk load, one durable transaction",
        &load_h,
        &load_o,
        secs,
    );
    row(&mut tab, "open (parse and fill)", &open_h, &open_o, secs);
    row(
        &mut tab,
        "point reads/s (`get`), 1 thread",
        &reads[0],
        &reads[1],
        num,
    );
    row(
        &mut tab,
        "durable commits/s (`set`), 1 thread",
        &commits[0][0],
        &commits[0][1],
        num,
    );
    row(
        &mut tab,
        "durable commits/s (`set`), 4 threads",
        &commits[1][0],
        &commits[1][1],
        num,
    );
    row(
        &mut tab,
        "full iteration (`iter`), seconds",
        &full[0],
        &full[1],
        secs,
    );
    tab.row(vec![
        "full iteration of the BTreeMap limit".to_owned(),
        String::new(),
        sum(Summary::of(&full[2]), secs),
        String::new(),
    ]);
    let ms = |x: f64| format!("{:.2} ms", x * 1e3);
    tab.row(vec![
        "a writer's commit, p99 / worst, nothing else running".to_owned(),
        format!("{} / {}", ms(quiet_h.0), ms(quiet_h.1)),
        format!("{} / {}", ms(quiet_o.0), ms(quiet_o.1)),
        String::new(),
    ]);
    tab.row(vec![
        "the same while another thread iterates the whole map in a loop".to_owned(),
        format!("{} / {}", ms(busy_h.0), ms(busy_h.1)),
        format!("{} / {}", ms(busy_o.0), ms(busy_o.1)),
        String::new(),
    ]);
    tab.notes.push(format!(
        "{} repetitions; the latency rows are one run of {secs_lat:.0} s each, a single \
         writer setting random keys durably. The hash map's `iter` copies every pair under \
         the map's read locks (writers wait); the ordered map's shares its leaves and holds \
         no lock.",
        cfg.reps
    ));
    tab.print();
    hashed.close()?;
    ordered.close()?;
    drop((rdb, sdb));
    Ok(())
}
