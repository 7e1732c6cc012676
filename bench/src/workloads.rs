//! The six workloads of issue 5.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::data::{key, val, Hist, Rng, Summary};
use crate::report::{mib, num, ratio, secs, sum, Series, Table};
use crate::stores::{self, Handle, Kind, Store, SYNC_NOTES};

pub struct Cfg {
    pub quick: bool,
    pub reps: usize,
    pub dir: PathBuf,
    pub svg: PathBuf,
    /// Seconds per measured run of a commit workload.
    pub commit_secs: f64,
    /// Seconds per measured run of a read workload.
    pub read_secs: f64,
    /// Keys in the bulk load, reopen and rebuild databases.
    pub bulk_keys: u64,
    /// Keys in the read database.
    pub read_keys: u64,
    /// Key counts of the scale workload.
    pub scale_keys: Vec<u64>,
    /// Where the scale plot goes.
    pub scale_svg: PathBuf,
}

/// Keys the commit workloads overwrite at random (prefilled first, so that stores which
/// rewrite everything per commit are measured on a fixed, small database).
const COMMIT_KEYS: u64 = 1000;

type Op<'a> = dyn Fn(&mut dyn Handle, &mut Rng) -> Result<()> + Sync + 'a;

pub struct RunOut {
    pub ops: u64,
    pub secs: f64,
    pub hist: Hist,
}

impl RunOut {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// `threads` threads each run `op` until `secs` have passed (or `max_ops` each).
pub fn run(
    store: &dyn Store,
    threads: usize,
    secs: f64,
    max_ops: u64,
    latency: bool,
    seed: u64,
    op: &Op<'_>,
) -> Result<RunOut> {
    let barrier = Barrier::new(threads + 1);
    let dur = Duration::from_secs_f64(secs);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(u64, Hist, Instant)> {
                    let h = store.handle();
                    let mut rng = Rng::new(seed ^ ((t as u64 + 1) << 32));
                    barrier.wait();
                    let mut h = h?;
                    let deadline = Instant::now() + dur;
                    let mut hist = Hist::default();
                    let mut n = 0;
                    while n < max_ops {
                        if latency {
                            let t0 = Instant::now();
                            if t0 >= deadline {
                                break;
                            }
                            op(&mut *h, &mut rng)?;
                            hist.record(t0.elapsed());
                        } else {
                            if n.is_multiple_of(64) && Instant::now() >= deadline {
                                break;
                            }
                            op(&mut *h, &mut rng)?;
                        }
                        n += 1;
                    }
                    Ok((n, hist, Instant::now()))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut out = RunOut {
            ops: 0,
            secs: 0.0,
            hist: Hist::default(),
        };
        let mut err = None;
        for w in workers {
            match w.join() {
                Ok(Ok((n, h, end))) => {
                    out.ops += n;
                    out.hist.merge(&h);
                    out.secs = out.secs.max((end - start).as_secs_f64());
                }
                Ok(Err(e)) => err = Some(e),
                Err(_) => err = Some(anyhow::anyhow!("worker panicked")),
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

fn fresh_dir(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).with_context(|| format!("rm -r {}", p.display()))?;
    }
    std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))?;
    Ok(())
}

fn open_loaded(kind: Kind, dir: &Path, n: u64) -> Result<Box<dyn Store>> {
    fresh_dir(dir)?;
    let mut s = stores::open(kind, dir)?;
    s.load(&mut (0..n).map(|i| (key(i), val(i, 0))))?;
    Ok(s)
}

fn set_op(space: u64) -> impl Fn(&mut dyn Handle, &mut Rng) -> Result<()> + Sync {
    move |h, rng| {
        let i = rng.below(space);
        h.set(key(i), val(i, rng.next()))
    }
}

fn txn_op(space: u64, n: usize) -> impl Fn(&mut dyn Handle, &mut Rng) -> Result<()> + Sync {
    move |h, rng| {
        let kv = (0..n)
            .map(|_| {
                let i = rng.below(space);
                (key(i), val(i, rng.next()))
            })
            .collect();
        h.txn(kv)
    }
}

/// Per (store, threads): the runs of every repetition.
struct Cell {
    rates: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    ops: u64,
    syncs: Option<u64>,
}

impl Cell {
    fn new() -> Cell {
        Cell {
            rates: Vec::new(),
            p50: Vec::new(),
            p99: Vec::new(),
            max: Vec::new(),
            ops: 0,
            syncs: None,
        }
    }
    fn add(&mut self, o: &RunOut) {
        self.rates.push(o.rate());
        self.p50.push(o.hist.pct(0.5));
        self.p99.push(o.hist.pct(0.99));
        self.max.push(o.hist.max_secs());
        self.ops += o.ops;
    }
}

const DURABLE_PEERS: [Kind; 7] = [
    Kind::Ptvp35,
    Kind::Redb,
    Kind::Sqlite,
    Kind::PickledbFsync,
    Kind::Rustbreak,
    Kind::Sled,
    Kind::Pickledb,
];

/// Workloads 1 and 2: durable commits of `keys_per_txn` keys at each thread count.
fn commit_table(
    cfg: &Cfg,
    name: &str,
    title: &str,
    threads: &[usize],
    keys_per_txn: usize,
) -> Result<Vec<Series>> {
    let mut cells: HashMap<(Kind, usize), Cell> = HashMap::new();
    for &t in threads {
        let mut open: Vec<(Kind, Box<dyn Store>)> = Vec::new();
        let mut kinds = DURABLE_PEERS.to_vec();
        if t == 1 {
            kinds.extend([Kind::Ptvp35Queued, Kind::LogGrow, Kind::LogPrealloc]);
        }
        for k in kinds {
            let dir = cfg.dir.join(name).join(format!("t{t}-{}", k.id()));
            let s = if k.is_limit() {
                fresh_dir(&dir)?;
                stores::open(k, &dir)?
            } else {
                open_loaded(k, &dir, COMMIT_KEYS)?
            };
            open.push((k, s));
        }
        let syncs0: Vec<Option<u64>> = open.iter().map(|(_, s)| s.syncs()).collect();
        for rep in 0..cfg.reps {
            for (k, s) in &open {
                let op: Box<Op<'_>> = if keys_per_txn == 1 {
                    Box::new(set_op(COMMIT_KEYS))
                } else {
                    Box::new(txn_op(COMMIT_KEYS, keys_per_txn))
                };
                let o = run(&**s, t, cfg.commit_secs, 1 << 20, true, rep as u64, &*op)
                    .with_context(|| format!("{name}: {} at {t} threads", k.id()))?;
                eprintln!(
                    "  {name} {:>14} t={t:<2} rep {rep}: {}/s",
                    k.id(),
                    num(o.rate())
                );
                cells.entry((*k, t)).or_insert_with(Cell::new).add(&o);
            }
        }
        for ((k, s), s0) in open.into_iter().zip(syncs0) {
            if let (Some(a), Some(b)) = (s0, s.syncs()) {
                if let Some(c) = cells.get_mut(&(k, t)) {
                    c.syncs = Some(b - a);
                }
            }
            s.close()?;
        }
        let _ = std::fs::remove_dir_all(cfg.dir.join(name));
    }
    let unit = if keys_per_txn == 1 {
        "commits/s"
    } else {
        "txns/s"
    };
    let mut tab = Table::new(
        title,
        &[
            "store",
            "threads",
            &format!("{unit}, median (min–max)"),
            "÷ ptvp35",
            "p50",
            "p99",
            "max",
            "power-safe",
        ],
    );
    let mut series: Vec<Series> = Vec::new();
    for &t in threads {
        let base = cells
            .get(&(Kind::Ptvp35, t))
            .map(|c| Summary::of(&c.rates).med);
        for k in stores::ALL {
            let Some(c) = cells.get(&(k, t)) else {
                continue;
            };
            let r = Summary::of(&c.rates);
            let mut label = k.label().to_owned();
            if let Some(sy) = c.syncs {
                if sy > 0 {
                    label = format!("{label} ({:.1} commits/sync)", c.ops as f64 / sy as f64);
                }
            }
            tab.row(vec![
                label,
                t.to_string(),
                sum(r, num),
                base.map_or("–".to_owned(), |b| ratio(r.med, b)),
                secs(Summary::of(&c.p50).med),
                secs(Summary::of(&c.p99).med),
                secs(Summary::of(&c.max).med),
                if k.power_safe() { "yes" } else { "no" }.to_owned(),
            ]);
            if k == Kind::Ptvp35Queued {
                // One thread only: a row, not a line of the plot.
                continue;
            }
            match series.iter_mut().find(|s| s.label == k.label()) {
                Some(s) => s.points.push((t, r.med)),
                None => series.push(Series {
                    label: k.label().to_owned(),
                    points: vec![(t, r.med)],
                    flat: k.is_limit(),
                }),
            }
        }
    }
    tab.notes.push(format!(
        "Each run: {:.1} s per store and thread count, {} repetitions interleaved across stores; \
         keys drawn at random from {COMMIT_KEYS} prefilled keys; latency percentiles are the median over the repetitions. \
         \"÷ ptvp35\" is the store's median divided by ptvp35's at the same thread count. The limits run at 1 thread.",
        cfg.commit_secs, cfg.reps
    ));
    tab.notes.push(SYNC_NOTES.to_owned());
    tab.print();
    Ok(series)
}

pub fn commits(cfg: &Cfg) -> Result<()> {
    let threads = [1, 4, 16, 64];
    let series = commit_table(cfg, "commits", "1. Durable single-key commits", &threads, 1)?;
    let svg = crate::report::svg(
        "Durable single-key commits/s against committing threads",
        &threads,
        &series,
    );
    if let Some(d) = cfg.svg.parent() {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir_all(d)?;
        }
    }
    std::fs::write(&cfg.svg, svg).with_context(|| format!("write {}", cfg.svg.display()))?;
    eprintln!("plot written to {}", cfg.svg.display());
    Ok(())
}

pub fn txn(cfg: &Cfg) -> Result<()> {
    commit_table(cfg, "txn", "2. Durable 10-key transactions", &[1, 16], 10)?;
    Ok(())
}

/// Workload 3: point reads at 1 and 2 threads, then a 90/10 read/durable-write mix.
pub fn reads(cfg: &Cfg) -> Result<()> {
    let n = cfg.read_keys;
    let keys: Vec<String> = (0..n).map(key).collect();
    let read_kinds = [
        Kind::Ptvp35,
        Kind::HashMap,
        Kind::Rustbreak,
        Kind::Pickledb,
        Kind::Sled,
        Kind::Redb,
        Kind::Sqlite,
    ];
    let mut open: Vec<(Kind, Box<dyn Store>)> = Vec::new();
    for k in read_kinds {
        open.push((k, open_loaded(k, &cfg.dir.join("reads").join(k.id()), n)?));
    }
    // (label, kind, without copy)
    let mut rows: Vec<(String, Kind, bool)> = Vec::new();
    for (k, _) in &open {
        rows.push((k.label().to_owned(), *k, false));
        if *k == Kind::Ptvp35 {
            rows.push(("ptvp35 `get_with` (no clone)".to_owned(), *k, true));
        }
    }
    let mut res: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    for t in [1usize, 2] {
        // rep 0 warms caches and is not recorded
        for rep in 0..=cfg.reps {
            for (ri, (_, k, by_ref)) in rows.iter().enumerate() {
                let Some((_, s)) = open.iter().find(|(kk, _)| kk == k) else {
                    continue;
                };
                let keys = &keys;
                let by_ref = *by_ref;
                let op = move |h: &mut dyn Handle, rng: &mut Rng| -> Result<()> {
                    let Some(k) = usize::try_from(rng.below(n)).ok().and_then(|i| keys.get(i))
                    else {
                        bail!("key index");
                    };
                    let found = if by_ref { h.get_ref(k)? } else { h.get(k)? };
                    if !found {
                        bail!("missing key {k}");
                    }
                    Ok(())
                };
                let secs = if rep == 0 { 0.05 } else { cfg.read_secs };
                let o = run(&**s, t, secs, u64::MAX, false, rep as u64, &op)?;
                eprintln!(
                    "  reads {:>14} t={t} rep {rep}: {}/s",
                    k.id(),
                    num(o.rate())
                );
                if rep > 0 {
                    res.entry((ri, t)).or_default().push(o.rate());
                }
            }
        }
    }
    let mut tab = Table::new(
        &format!("3. Point reads on {} keys", num(n as f64)),
        &[
            "store",
            "reads/s, 1 thread",
            "÷ ptvp35",
            "reads/s, 2 threads",
            "÷ ptvp35",
        ],
    );
    let base = |t: usize| res.get(&(0, t)).map_or(f64::NAN, |v| Summary::of(v).med);
    for (ri, (label, _, _)) in rows.iter().enumerate() {
        let mut cells = vec![label.clone()];
        for t in [1, 2] {
            let s = Summary::of(res.get(&(ri, t)).map_or(&[][..], |v| v));
            cells.push(sum(s, num));
            cells.push(ratio(s.med, base(t)));
        }
        tab.row(cells);
    }
    tab.notes.push(format!(
        "{:.1} s per run, {} repetitions, uniformly random keys. ptvp35 `get`, the HashMap and rustbreak hand out a cloned typed value; \
         pickledb deserializes the JSON it keeps; sled, redb and SQLite hand out the raw bytes (a copy) with no deserialization, \
         which flatters them. redb opens a read transaction per get, SQLite runs a cached prepared statement on a connection per thread.",
        cfg.read_secs, cfg.reps
    ));
    tab.print();

    // 90/10 mix with durable writes, 2 threads.
    let mix_kinds = [
        Kind::Ptvp35,
        Kind::Redb,
        Kind::Sqlite,
        Kind::PickledbFsync,
        Kind::Rustbreak,
        Kind::Sled,
        Kind::Pickledb,
    ];
    let pf = cfg.dir.join("reads").join(Kind::PickledbFsync.id());
    open.push((
        Kind::PickledbFsync,
        open_loaded(Kind::PickledbFsync, &pf, n)?,
    ));
    let mut mix: HashMap<Kind, Vec<f64>> = HashMap::new();
    for rep in 0..cfg.reps {
        for k in mix_kinds {
            let Some((_, s)) = open.iter().find(|(kk, _)| *kk == k) else {
                continue;
            };
            let keys = &keys;
            let op = move |h: &mut dyn Handle, rng: &mut Rng| -> Result<()> {
                let i = rng.below(n);
                if rng.below(10) == 0 {
                    h.set(key(i), val(i, rng.next()))
                } else {
                    let Some(k) = usize::try_from(i).ok().and_then(|i| keys.get(i)) else {
                        bail!("key index");
                    };
                    h.get(k).map(|_| ())
                }
            };
            let o = run(&**s, 2, cfg.commit_secs, u64::MAX, false, rep as u64, &op)?;
            eprintln!("  mix {:>14} rep {rep}: {}/s", k.id(), num(o.rate()));
            mix.entry(k).or_default().push(o.rate());
        }
    }
    let mut tab = Table::new(
        &format!(
            "3b. 90% reads / 10% durable single-key writes, 2 threads, {} keys",
            num(n as f64)
        ),
        &["store", "ops/s, median (min–max)", "÷ ptvp35", "power-safe"],
    );
    let base = mix
        .get(&Kind::Ptvp35)
        .map_or(f64::NAN, |v| Summary::of(v).med);
    for k in mix_kinds {
        let s = Summary::of(mix.get(&k).map_or(&[][..], |v| v));
        tab.row(vec![
            k.label().to_owned(),
            sum(s, num),
            ratio(s.med, base),
            if k.power_safe() { "yes" } else { "no" }.to_owned(),
        ]);
    }
    tab.notes.push(format!(
        "{:.1} s per run, {} repetitions. pickledb and rustbreak rewrite the whole {}-key file on every write.",
        cfg.commit_secs,
        cfg.reps,
        num(n as f64)
    ));
    tab.notes.push(SYNC_NOTES.to_owned());
    tab.print();
    for (_, s) in open {
        s.close()?;
    }
    let _ = std::fs::remove_dir_all(cfg.dir.join("reads"));
    Ok(())
}

/// What a child process reports.
#[derive(Deserialize, Default, Clone, Copy)]
pub struct ChildOut {
    pub secs: f64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub hwm_kib: u64,
    #[serde(default)]
    pub rss_kib: u64,
    /// A rebuild's longest lock (`Stats::rebuild_longest_lock`).
    #[serde(default)]
    pub lock_secs: f64,
    /// A rebuild's install stall (`Stats::rebuild_install`).
    #[serde(default)]
    pub install_secs: f64,
}

pub fn child(args: &[String]) -> Result<ChildOut> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("__child")
        .args(args)
        .output()
        .context("spawn child")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "child {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("child {args:?} printed no result"))?;
    Ok(serde_json::from_str(line)?)
}

const BULK_KINDS: [Kind; 9] = [
    Kind::Ptvp35,
    Kind::Ptvp35Extend,
    Kind::Redb,
    Kind::Sqlite,
    Kind::PickledbFsync,
    Kind::Rustbreak,
    Kind::Sled,
    Kind::Ndjson,
    Kind::MemLimit,
];

fn bulk_dir(cfg: &Cfg, k: Kind) -> PathBuf {
    cfg.dir.join("bulk").join(k.id())
}

fn bulk_once(cfg: &Cfg, k: Kind) -> Result<ChildOut> {
    let dir = bulk_dir(cfg, k);
    fresh_dir(&dir)?;
    child(&[
        "bulk".to_owned(),
        k.id().to_owned(),
        dir.display().to_string(),
        cfg.bulk_keys.to_string(),
    ])
}

/// Workload 4: one durable batch of `bulk_keys` keys, each store in a child process.
pub fn bulk(cfg: &Cfg) -> Result<()> {
    let mut res: HashMap<Kind, Vec<ChildOut>> = HashMap::new();
    for rep in 0..cfg.reps {
        for k in BULK_KINDS {
            let o = bulk_once(cfg, k).with_context(|| format!("bulk {}", k.id()))?;
            eprintln!("  bulk {:>14} rep {rep}: {}", k.id(), secs(o.secs));
            res.entry(k).or_default().push(o);
        }
    }
    let mut tab = Table::new(
        &format!(
            "4. Bulk load of {} keys in one batch, made durable",
            num(cfg.bulk_keys as f64)
        ),
        &[
            "store",
            "time, median (min–max)",
            "÷ ptvp35",
            "on disk",
            "peak RSS (VmHWM)",
        ],
    );
    let med = |k: Kind, f: fn(&ChildOut) -> f64| {
        Summary::of(
            &res.get(&k)
                .map(|v| v.iter().map(f).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    let base = med(Kind::Ptvp35, |o| o.secs).med;
    for k in BULK_KINDS {
        let t = med(k, |o| o.secs);
        tab.row(vec![
            k.label().to_owned(),
            sum(t, secs),
            ratio(t.med, base),
            mib(med(k, |o| o.bytes as f64).med),
            mib(med(k, |o| o.hwm_kib as f64 * 1024.0).med),
        ]);
    }
    tab.notes.push(format!(
        "Each store in its own process (this binary re-executed), {} repetitions. Time from an empty store to the \
         load call returning durable; values generated on the fly. Peak RSS is the whole process's, values included \
         where the store needs them all at once (ptvp35's `Delta`, sled's `Batch`). ⁴ The in-memory-store limit \
         (issue 11): every record serialized into one buffer, one write, one fdatasync, every pair inserted into \
         one `HashMap` sized up front.",
        cfg.reps
    ));
    tab.print();
    Ok(())
}

/// Workload 5: open to first successful read, and VmRSS after, each in its own process.
pub fn reopen(cfg: &Cfg) -> Result<()> {
    // (label, kind, dir kind, parse threads)
    let rows: Vec<(String, Kind, Kind, usize)> = vec![
        ("ptvp35".into(), Kind::Ptvp35, Kind::Ptvp35, 0),
        ("redb 4".into(), Kind::Redb, Kind::Redb, 0),
        ("SQLite".into(), Kind::Sqlite, Kind::Sqlite, 0),
        ("sled 0.34".into(), Kind::Sled, Kind::Sled, 0),
        (
            "pickledb 0.5".into(),
            Kind::Pickledb,
            Kind::PickledbFsync,
            0,
        ),
        ("rustbreak 2".into(), Kind::Rustbreak, Kind::Rustbreak, 0),
        (
            "limit: serde_json → typed HashMap, 1 thread".into(),
            Kind::Ndjson,
            Kind::Ndjson,
            1,
        ),
        (
            "limit: serde_json → typed HashMap, 2 threads".into(),
            Kind::Ndjson,
            Kind::Ndjson,
            2,
        ),
    ];
    // The limit at ptvp35's default parse threads (the cores, at most 8), where that is
    // not one of the rows above.
    let mut rows = rows;
    let cores = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(ptvp35::MAX_DEFAULT_PARSE_THREADS);
    if cores > 2 {
        rows.push((
            format!("limit: serde_json → typed HashMap, {cores} threads"),
            Kind::Ndjson,
            Kind::Ndjson,
            cores,
        ));
    }
    for (_, _, d, _) in &rows {
        let dir = bulk_dir(cfg, *d);
        let marker = dir.join(".complete");
        if !marker.exists() {
            eprintln!("  reopen: building the {} database first", d.id());
            bulk_once(cfg, *d)?;
        }
    }
    let mut res: HashMap<(usize, &str), Vec<ChildOut>> = HashMap::new();
    for rep in 0..cfg.reps {
        for (ri, (_, k, d, threads)) in rows.iter().enumerate() {
            for vk in ["typed", "value"] {
                if *k == Kind::Rustbreak && vk == "value" {
                    continue; // see note 4
                }
                let r = child(&[
                    "reopen".to_owned(),
                    k.id().to_owned(),
                    bulk_dir(cfg, *d).display().to_string(),
                    vk.to_owned(),
                    threads.to_string(),
                ]);
                match r {
                    Ok(o) => {
                        eprintln!(
                            "  reopen {:>14} {vk} t={threads} rep {rep}: {} {}",
                            k.id(),
                            secs(o.secs),
                            mib(o.rss_kib as f64 * 1024.0)
                        );
                        res.entry((ri, vk)).or_default().push(o);
                    }
                    Err(e) => eprintln!("  reopen {} {vk}: {e:#}", k.id()),
                }
            }
        }
    }
    let get = |ri: usize, vk: &str, f: fn(&ChildOut) -> f64| {
        Summary::of(
            &res.get(&(ri, vk))
                .map(|v| v.iter().map(f).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    let map_rss = get(6, "typed", |o| o.rss_kib as f64).med;
    let mut tab = Table::new(
        &format!(
            "5. Reopen of the {}-key database: open to first successful read",
            num(cfg.bulk_keys as f64)
        ),
        &[
            "store",
            "values",
            "time, median (min–max)",
            "÷ ptvp35",
            "VmRSS after",
            "÷ typed HashMap",
        ],
    );
    for vk in ["typed", "value"] {
        let base = get(0, vk, |o| o.secs).med;
        for (ri, (label, k, _, _)) in rows.iter().enumerate() {
            if *k == Kind::Rustbreak && vk == "value" {
                tab.row(vec![
                    label.clone(),
                    "serde_json::Value".to_owned(),
                    "n/a ⁴".to_owned(),
                    "–".to_owned(),
                    "–".to_owned(),
                    "–".to_owned(),
                ]);
                continue;
            }
            let t = get(ri, vk, |o| o.secs);
            let rss = get(ri, vk, |o| o.rss_kib as f64).med;
            tab.row(vec![
                label.clone(),
                if vk == "typed" {
                    "typed struct"
                } else {
                    "serde_json::Value"
                }
                .to_owned(),
                sum(t, secs),
                ratio(t.med, base),
                mib(rss * 1024.0),
                ratio(rss, map_rss),
            ]);
        }
    }
    tab.notes.push(format!(
        "Each open in a fresh process, {} repetitions; the databases are the ones workload 4 wrote. \
         redb, SQLite and sled read from disk on demand (their open does not load the data; the page cache is warm); \
         ptvp35, pickledb and rustbreak load everything. ptvp35 parses on {} threads (its default: the cores, at most {}). \
         \"÷ typed HashMap\" divides by the resident memory of the 1-thread parse into a typed HashMap.",
        cfg.reps,
        cores,
        ptvp35::MAX_DEFAULT_PARSE_THREADS
    ));
    tab.notes.push(
        "⁴ rustbreak's RON format (ron 0.6) cannot read its own file into `serde_json::Value`: \
         `deserialize_any` on a struct field panics (\"IdDeserializer may only be used for identifiers\")."
            .to_owned(),
    );
    tab.print();
    Ok(())
}

/// Workload 6: a rebuild of the big ptvp35 database while 2 threads read and 2 commit.
pub fn rebuild(cfg: &Cfg) -> Result<()> {
    let dir = cfg.dir.join("rebuild");
    let n = cfg.bulk_keys;
    fresh_dir(&dir)?;
    let mut eng = crate::engine::Engine::open(&dir)?;
    eng.load(&mut (0..n).map(|i| (key(i), val(i, 0))))?;
    let e = &eng.db;
    let keys: Vec<String> = (0..n).map(key).collect();
    let (pre, post) = if cfg.quick { (0.5, 0.3) } else { (1.0, 0.5) };
    // metric -> values over reps
    let mut m: HashMap<String, Vec<f64>> = HashMap::new();
    for rep in 0..cfg.reps {
        let phase = AtomicU8::new(0);
        let stop = AtomicBool::new(false);
        let before = e.stats();
        let (reads, commits, dur) = thread::scope(|s| -> Result<_> {
            let mut workers = Vec::new();
            for w in 0..4u64 {
                let (phase, stop, keys, e) = (&phase, &stop, &keys, e);
                workers.push(s.spawn(move || -> Result<[Hist; 3]> {
                    let mut rng = Rng::new(rep as u64 * 100 + w + 7);
                    let mut h: [Hist; 3] = Default::default();
                    while !stop.load(Ordering::Relaxed) {
                        let i = rng.below(n);
                        let p0 = phase.load(Ordering::Relaxed);
                        let t0 = Instant::now();
                        if w < 2 {
                            let k = usize::try_from(i).ok().and_then(|i| keys.get(i));
                            if let Some(k) = k {
                                std::hint::black_box(e.get(k));
                            }
                        } else {
                            e.set(key(i), val(i, rng.next()))?;
                        }
                        let d = t0.elapsed();
                        let p1 = phase.load(Ordering::Relaxed);
                        let c = if p0 == 1 || p1 == 1 || p0 != p1 {
                            1
                        } else {
                            p0
                        };
                        h[c as usize].record(d);
                    }
                    Ok(h)
                }));
            }
            thread::sleep(Duration::from_secs_f64(pre));
            phase.store(1, Ordering::SeqCst);
            let t = Instant::now();
            let r = e.compact();
            let dur = t.elapsed().as_secs_f64();
            phase.store(2, Ordering::SeqCst);
            thread::sleep(Duration::from_secs_f64(post));
            stop.store(true, Ordering::SeqCst);
            let mut reads: [Hist; 3] = Default::default();
            let mut commits: [Hist; 3] = Default::default();
            for (w, h) in workers.into_iter().enumerate() {
                let h = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
                let dst = if w < 2 { &mut reads } else { &mut commits };
                for (a, b) in dst.iter_mut().zip(&h) {
                    a.merge(b);
                }
            }
            r?;
            Ok((reads, commits, dur))
        })?;
        let after = e.stats();
        eprintln!(
            "  rebuild rep {rep}: {} (file {} -> {}, rebuilds +{})",
            secs(dur),
            mib(before.file_len as f64),
            mib(after.file_len as f64),
            after.rebuilds - before.rebuilds
        );
        m.entry("dur".into()).or_default().push(dur);
        m.entry("lock".into())
            .or_default()
            .push(after.rebuild_longest_lock.as_secs_f64());
        m.entry("install".into())
            .or_default()
            .push(after.rebuild_install.as_secs_f64());
        m.entry("file_before".into())
            .or_default()
            .push(before.file_len as f64);
        m.entry("file_after".into())
            .or_default()
            .push(after.file_len as f64);
        for (name, h) in [("r", &reads), ("c", &commits)] {
            let (base, during) = (&h[0], &h[1]);
            let key = |s: &str| format!("{name}_{s}");
            m.entry(key("bp50")).or_default().push(base.pct(0.5));
            m.entry(key("bp99")).or_default().push(base.pct(0.99));
            m.entry(key("bmax")).or_default().push(base.max_secs());
            m.entry(key("dp99")).or_default().push(during.pct(0.99));
            m.entry(key("dmax")).or_default().push(during.max_secs());
            m.entry(key("dn")).or_default().push(during.count() as f64);
        }
    }
    Box::new(eng).close()?;
    let _ = std::fs::remove_dir_all(&dir);
    let g = |k: &str| Summary::of(m.get(k).map_or(&[][..], |v| v));
    let mut tab = Table::new(
        &format!(
            "6. Rebuild (compact) of the {}-key ptvp35 database while 2 threads read and 2 commit",
            num(n as f64)
        ),
        &["measure", "median (min–max)"],
    );
    tab.row(vec!["rebuild duration".into(), sum(g("dur"), secs)]);
    tab.row(vec![
        "longest lock held by the rebuild (`Stats::rebuild_longest_lock`)".into(),
        sum(g("lock"), secs),
    ]);
    tab.row(vec![
        "writer stalled at install (`Stats::rebuild_install`)".into(),
        sum(g("install"), secs),
    ]);
    tab.row(vec![
        "file before → after".into(),
        format!(
            "{} → {}",
            mib(g("file_before").med),
            mib(g("file_after").med)
        ),
    ]);
    for (p, what) in [("r", "reads"), ("c", "commits")] {
        tab.row(vec![
            format!("{what} before the rebuild: p50 / p99 / max"),
            format!(
                "{} / {} / {}",
                secs(g(&format!("{p}_bp50")).med),
                secs(g(&format!("{p}_bp99")).med),
                secs(g(&format!("{p}_bmax")).med)
            ),
        ]);
        tab.row(vec![
            format!("{what} during the rebuild: count"),
            sum(g(&format!("{p}_dn")), num),
        ]);
        tab.row(vec![
            format!("{what} during the rebuild: p99"),
            sum(g(&format!("{p}_dp99")), secs),
        ]);
        tab.row(vec![
            format!("{what} during the rebuild: worst"),
            sum(g(&format!("{p}_dmax")), secs),
        ]);
    }
    tab.notes.push(format!(
        "{} repetitions on one open database; {pre:.1} s of load before each `compact()`, {post:.1} s after. \
         An operation counts as \"during\" when it overlaps the `compact()` call.",
        cfg.reps
    ));
    tab.print();
    Ok(())
}
