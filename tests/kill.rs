//! Real process kills: a child process commits bank transfers through `transact` and the
//! parent SIGKILLs it at random moments, then checks the files it left.
//!
//! The child is this test binary re-run with `--exact kill_child` and `PTVP35_KILL_CHILD`
//! set; without that variable `kill_child` returns at once. 30 rounds run by default,
//! `PTVP35_KILL_ROUNDS=300` runs more, `PTVP35_KILL_SEED=<n>` replays a seed.
#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ptvp35::{DbConnection, Delta, Error, MapKind, Options, RecoveryReport};
use serde::{Deserialize, Serialize};

const CHILD_ENV: &str = "PTVP35_KILL_CHILD";
const ROUND_ENV: &str = "PTVP35_KILL_ROUND";
/// Set for a child that keeps the ordered map (the file is the same for both maps).
const ORDERED_ENV: &str = "PTVP35_KILL_ORDERED";
const ACCOUNTS: u64 = 10;
const INITIAL: i64 = 1000;
const THREADS: u64 = 3;
const COMPACT_EVERY: u64 = 200;
/// A child that the parent somehow failed to kill stops by itself after this long.
const CHILD_DEADLINE: Duration = Duration::from_mins(2);
/// SIGKILL's number, the same on every Unix.
const SIGKILL: i32 = 9;
const SIX: [&str; 6] = [
    "",
    ".backup",
    ".recover",
    ".truncate",
    ".truncate_flag",
    ".error",
];

/// `("acct", i)` balances, `("base", i)` balances at the parent's last checkpoint,
/// `("xfer", id)` the transfers committed since.
type Key = (String, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Val {
    Bal(i64),
    Xfer { from: u64, to: u64, amount: i64 },
}

fn acct(i: u64) -> Key {
    ("acct".into(), i)
}

fn base(i: u64) -> Key {
    ("base".into(), i)
}

fn xfer(id: u64) -> Key {
    ("xfer".into(), id)
}

/// A transfer id: the round, the child's thread and the thread's count of committed
/// transfers. A thread submits its next transfer only once the last one is acknowledged.
fn xfer_id(round: u64, thread: u64, n: u64) -> u64 {
    (round << 32) | (thread << 24) | n
}

/// `(round, thread)` and `n` of an id.
fn split_id(id: u64) -> ((u64, u64), u64) {
    ((id >> 32, (id >> 24) & 0xff), id & 0xff_ffff)
}

/// xorshift64*: small, seedable, good enough for delays and transfers.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn balance(v: Option<Val>) -> anyhow::Result<i64> {
    match v {
        Some(Val::Bal(b)) => Ok(b),
        other => bail!("expected a balance, found {other:?}"),
    }
}

fn say(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// The child: commits transfers from `THREADS` threads until it is killed. After each
/// acknowledged transfer it prints `ok <id> <from> <to> <amount>`; around every
/// `COMPACT_EVERY`-th it rebuilds the file between `compact-start` and `compact-end`.
#[test]
fn kill_child() -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return Ok(());
    };
    let round: u64 = std::env::var(ROUND_ENV)?.parse()?;
    if std::env::var_os(ORDERED_ENV).is_some() {
        let db = Options::new().open_ordered::<Key, Val>(PathBuf::from(path))?;
        return commit_until_killed(&db, round);
    }
    let db = DbConnection::<Key, Val>::open(PathBuf::from(path))?;
    commit_until_killed(&db, round)
}

fn commit_until_killed<M: MapKind<Key, Val>>(
    db: &DbConnection<Key, Val, M>,
    round: u64,
) -> anyhow::Result<()> {
    say("opened")?;
    let committed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let committed = &committed;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut rng = Rng::new(round * 1000 + t + 1);
                    let mut n = 0;
                    while start.elapsed() < CHILD_DEADLINE {
                        let id = xfer_id(round, t, n);
                        let from = rng.below(ACCOUNTS);
                        let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                        let amount = i64::try_from(1 + rng.below(100))?;
                        let r = db.transact(|tx| -> anyhow::Result<bool> {
                            let a = balance(tx.get(&acct(from)))?;
                            if a < amount {
                                return Ok(false);
                            }
                            let b = balance(tx.get(&acct(to)))?;
                            tx.set_nowait(acct(from), Val::Bal(a - amount))?;
                            tx.set_nowait(acct(to), Val::Bal(b + amount))?;
                            tx.set_nowait(xfer(id), Val::Xfer { from, to, amount })?;
                            Ok(true)
                        });
                        match r {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(e) if matches!(e.downcast_ref(), Some(Error::Conflict { .. })) => {
                                continue
                            }
                            Err(e) => return Err(e),
                        }
                        say(&format!("ok {id} {from} {to} {amount}"))?;
                        n += 1;
                        if committed.fetch_add(1, Ordering::Relaxed) % COMPACT_EVERY
                            == COMPACT_EVERY - 1
                        {
                            say("compact-start")?;
                            db.compact()?;
                            say("compact-end")?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a child worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(())
}

/// What the child printed before it died (a torn last line is dropped).
#[derive(Debug, Default)]
struct Printed {
    opened: bool,
    /// A `compact-start` without its `compact-end`: the kill may have hit a rebuild.
    compacting: bool,
    xfers: BTreeMap<u64, Val>,
}

fn parse_output(out: &[u8]) -> anyhow::Result<Printed> {
    let text = String::from_utf8_lossy(out);
    let mut p = Printed::default();
    let mut open_compactions = 0i64;
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    for line in complete.lines() {
        // The harness prints `test kill_child ... ` with no newline before the test runs.
        let line = line.strip_prefix("test kill_child ... ").unwrap_or(line);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["opened"] => p.opened = true,
            ["compact-start"] => open_compactions += 1,
            ["compact-end"] => open_compactions -= 1,
            ["ok", id, from, to, amount] => {
                let v = Val::Xfer {
                    from: from.parse()?,
                    to: to.parse()?,
                    amount: amount.parse()?,
                };
                p.xfers.insert(id.parse()?, v);
            }
            _ => {} // the test harness's own lines
        }
    }
    p.compacting = open_compactions > 0;
    Ok(p)
}

/// The names in `dir`, sorted.
fn files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// Fails unless every name in `dir` is one of `allowed` suffixes of `name`.
fn only_files(dir: &Path, name: &str, allowed: &[&str]) -> anyhow::Result<()> {
    for f in files(dir)? {
        ensure!(
            allowed.iter().any(|s| f == format!("{name}{s}")),
            "stray file {f} in {}",
            dir.display()
        );
    }
    Ok(())
}

/// Sets up 10 accounts of 1000 (and their checkpoint) and closes cleanly.
fn set_up(path: &Path) -> anyhow::Result<()> {
    let db = DbConnection::<Key, Val>::open(path)?;
    let mut d = Delta::new();
    for i in 0..ACCOUNTS {
        d.set(acct(i), Val::Bal(INITIAL))?;
        d.set(base(i), Val::Bal(INITIAL))?;
    }
    db.commit_transaction(d)?;
    db.close()?;
    Ok(())
}

/// Checks a reopened database against what the children printed. `expected` holds every
/// transfer printed (or found present by an earlier check) since the last checkpoint; the
/// transfers found present are added to it. Returns how many there are.
fn check(db: &DbConnection<Key, Val>, expected: &mut BTreeMap<u64, Val>) -> anyhow::Result<u64> {
    let snap = db.snapshot();
    let mut bal = BTreeMap::new();
    let mut replay = BTreeMap::new();
    let mut present = BTreeMap::new();
    for (k, v) in &snap {
        match (k.0.as_str(), *v) {
            ("acct", Val::Bal(b)) if k.1 < ACCOUNTS => {
                bal.insert(k.1, b);
            }
            ("base", Val::Bal(b)) if k.1 < ACCOUNTS => {
                *replay.entry(k.1).or_insert(0) += b;
            }
            ("xfer", Val::Xfer { from, to, amount }) => {
                *replay.entry(from).or_insert(0) -= amount;
                *replay.entry(to).or_insert(0) += amount;
                present.insert(k.1, *v);
            }
            _ => bail!("unexpected record {k:?} = {v:?}"),
        }
    }
    ensure!(bal.len() as u64 == ACCOUNTS, "accounts missing: {bal:?}");
    let total: i64 = bal.values().sum();
    ensure!(
        total == INITIAL * 10,
        "total balance {total}, not 10000: {bal:?}"
    );
    ensure!(bal.values().all(|&b| b >= 0), "a negative balance: {bal:?}");
    // Every transfer recorded is in both balances, and no balance moved without a record.
    ensure!(
        replay == bal,
        "checkpoint plus the recorded transfers {replay:?} != balances {bal:?}"
    );
    for (id, v) in expected.iter() {
        let got = present.get(id);
        ensure!(
            got == Some(v),
            "transfer {id:#x} {v:?} was acknowledged but the database has {got:?}"
        );
    }
    // A thread's transfers are a prefix of its sequence, and at most its last one (in
    // flight when the kill came) can be present without having been printed.
    let mut groups: BTreeMap<(u64, u64), BTreeSet<u64>> = BTreeMap::new();
    for id in present.keys() {
        let (g, n) = split_id(*id);
        groups.entry(g).or_default().insert(n);
    }
    for (g, ns) in &groups {
        let last = ns.last().copied().unwrap_or(0);
        ensure!(
            ns.len() as u64 == last + 1,
            "round {} thread {}: transfers present are not a prefix: {ns:?}",
            g.0,
            g.1
        );
        let printed = expected.keys().filter(|id| split_id(**id).0 == *g).count() as u64;
        ensure!(
            last <= printed,
            "round {} thread {}: {} present, only {printed} acknowledged",
            g.0,
            g.1,
            last + 1
        );
    }
    let n = present.len() as u64;
    expected.extend(present);
    Ok(n)
}

/// Makes the current balances the new checkpoint and removes the transfer records, so the
/// file stays small over hundreds of rounds.
fn checkpoint(
    db: &DbConnection<Key, Val>,
    expected: &mut BTreeMap<u64, Val>,
) -> anyhow::Result<()> {
    let mut d = Delta::new();
    for i in 0..ACCOUNTS {
        d.set(base(i), Val::Bal(balance(db.get(&acct(i)))?))?;
    }
    for id in expected.keys() {
        d.remove(&xfer(*id))?;
    }
    db.commit_transaction(d)?;
    expected.clear();
    Ok(())
}

/// Figures over all rounds.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: u64,
    killed_before_open: u64,
    killed_in_recovery: u64,
    killed_compacting: u64,
    restored_from_backup: u64,
    discarded_stale_backup: u64,
    cuts: u64,
    cut_bytes: u64,
    /// What the recoveries appended to `P.error` (recovery keeps only non-zero bytes).
    error_bytes: u64,
}

impl Tally {
    fn add_report(&mut self, r: &RecoveryReport) {
        self.restored_from_backup += u64::from(r.restored_from_backup);
        self.discarded_stale_backup += u64::from(r.discarded_stale_backup);
        if let Some(cut) = r.cut {
            self.cuts += 1;
            self.cut_bytes += cut.len;
        }
    }
}

/// Runs the child for `delay`, SIGKILLs it and returns what it printed.
fn run_child(path: &Path, round: u64, delay: Duration, ordered: bool) -> anyhow::Result<Printed> {
    let mut command = Command::new(std::env::current_exe()?);
    if ordered {
        command.env(ORDERED_ENV, "1");
    }
    let mut child = command
        .args([
            "--exact",
            "kill_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, path)
        .env(ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn the child")?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    // Drain both pipes while the child runs, so it never blocks on a full pipe.
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).map(|_| v)
    });
    std::thread::sleep(delay);
    child.kill().context("kill the child")?; // SIGKILL
    let status = child.wait()?;
    let out = out
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let err = err
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    if status.signal() != Some(SIGKILL) {
        bail!(
            "the child ended by itself ({status}) before the kill:\n{}\n{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
    }
    parse_output(&out)
}

fn copy_six(from: &Path, to: &Path, name: &str) -> anyhow::Result<()> {
    for f in files(to)? {
        std::fs::remove_file(to.join(f))?;
    }
    for s in SIX {
        let src = from.join(format!("{name}{s}"));
        if src.exists() {
            std::fs::copy(&src, to.join(format!("{name}{s}")))?;
        }
    }
    Ok(())
}

/// One round after the kill: check the files, reopen (in place, or on a copy so that the
/// next child has to recover the leftovers itself), verify, close cleanly.
fn verify_round(
    dir: &Path,
    scratch: &Path,
    in_place: bool,
    expected: &mut BTreeMap<u64, Val>,
    tally: &mut Tally,
) -> anyhow::Result<(RecoveryReport, u64)> {
    let name = "bank.db";
    only_files(dir, name, &SIX)?;
    let at = if in_place {
        dir
    } else {
        copy_six(dir, scratch, name)?;
        scratch
    };
    let error_len = || std::fs::metadata(at.join(format!("{name}.error"))).map_or(0, |m| m.len());
    let error_before = error_len();
    let db = DbConnection::<Key, Val>::open(at.join(name)).context("reopen after the kill")?;
    let report = db.recovery_report().clone();
    tally.add_report(&report);
    let present = check(&db, expected)?;
    if in_place {
        checkpoint(&db, expected)?;
    }
    db.close()?;
    tally.error_bytes += error_len() - error_before;
    only_files(at, name, &["", ".error"])?;
    Ok((report, present))
}

fn rounds() -> anyhow::Result<u64> {
    Ok(match std::env::var("PTVP35_KILL_ROUNDS") {
        Ok(s) => s.parse().context("PTVP35_KILL_ROUNDS")?,
        Err(_) => 30,
    })
}

fn seed() -> anyhow::Result<u64> {
    if let Ok(s) = std::env::var("PTVP35_KILL_SEED") {
        return s.parse().context("PTVP35_KILL_SEED");
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(u64::try_from(t.as_nanos() % u128::from(u64::MAX))?)
}

#[test]
fn sigkill_mid_commit_loses_no_acknowledged_transfer() -> anyhow::Result<()> {
    kill_test("kill", rounds()?, false)
}

/// The same with children that keep the ordered map (fewer rounds: the protocol is the
/// same, the map's copy for a rebuild is not).
#[test]
fn sigkill_mid_commit_with_the_ordered_map_loses_no_acknowledged_transfer() -> anyhow::Result<()> {
    kill_test("kill-ordered", rounds()?.div_ceil(3), true)
}

fn kill_test(name: &str, rounds: u64, ordered: bool) -> anyhow::Result<()> {
    let seed = seed()?;
    println!("{name}: {rounds} rounds, seed {seed} (PTVP35_KILL_SEED={seed} replays the delays)");
    let root = std::env::temp_dir().join(format!("ptvp35-{name}-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (dir, scratch) = (root.join("live"), root.join("scratch"));
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&scratch)?;
    let result = run_rounds(&dir, &scratch, rounds, seed, ordered);
    match &result {
        Ok(()) => std::fs::remove_dir_all(&root)?,
        Err(_) => println!("files kept in {}", root.display()),
    }
    result
}

fn run_rounds(
    dir: &Path,
    scratch: &Path,
    rounds: u64,
    seed: u64,
    ordered: bool,
) -> anyhow::Result<()> {
    let path = dir.join("bank.db");
    set_up(&path)?;
    let start = Instant::now();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut expected = BTreeMap::new();
    let mut dirty = false; // the leftovers of the last kill are still unrecovered
    for round in 0..rounds {
        // One round in six kills within the child's first 40 ms (start-up and, when the
        // last check ran on a copy, its recovery); the others while it commits.
        let ms = if rng.below(6) == 0 {
            rng.below(40)
        } else {
            30 + rng.below(300)
        };
        let printed = run_child(&path, round, Duration::from_millis(ms), ordered)
            .with_context(|| format!("round {round}"))?;
        tally.acknowledged += printed.xfers.len() as u64;
        tally.killed_before_open += u64::from(!printed.opened);
        tally.killed_in_recovery += u64::from(!printed.opened && dirty);
        tally.killed_compacting += u64::from(printed.compacting);
        expected.extend(printed.xfers.iter().map(|(k, v)| (*k, *v)));
        let in_place = rng.below(2) == 0;
        let (report, present) = verify_round(dir, scratch, in_place, &mut expected, &mut tally)
            .with_context(|| format!("round {round} (seed {seed}, kill after {ms} ms)"))?;
        println!(
            "round {round}: kill after {ms} ms, {} acknowledged, {present} present{}{}, {report:?}",
            printed.xfers.len(),
            if printed.compacting {
                ", mid-compaction"
            } else {
                ""
            },
            if in_place {
                ", checked in place"
            } else {
                ", checked on a copy"
            },
        );
        dirty = !in_place;
    }
    println!(
        "{rounds} kills in {:.1?}: {} transfers acknowledged; {} kills before open returned \
         ({} of them with leftovers to recover), {} during a compaction; recoveries: {} \
         restored from backup, {} stale backups discarded, {} cut {} bytes, of which {} non-zero went to P.error",
        start.elapsed(),
        tally.acknowledged,
        tally.killed_before_open,
        tally.killed_in_recovery,
        tally.killed_compacting,
        tally.restored_from_backup,
        tally.discarded_stale_backup,
        tally.cuts,
        tally.cut_bytes,
        tally.error_bytes,
    );
    Ok(())
}
