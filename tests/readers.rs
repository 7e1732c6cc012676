//! Read-only handles beside an owner in another process: they see every acknowledged
//! key, follow later batches and rebuilds with `refresh`, refuse every write, and never
//! change a file, not even one a crash left. The owner is this test binary re-run with
//! `PTVP35_READERS_CHILD` naming the database; it takes commands on its standard input.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use common::{TempDir, TestDb};
use ptvp35::{Delta, Error, Options};

type Db = TestDb<u32, String>;

const CHILD_ENV: &str = "PTVP35_READERS_CHILD";

fn value(k: u32, round: u32) -> String {
    format!("v{k}-{round}")
}

/// The owner: `more FROM TO ROUND` sets keys FROM..TO, `rm K` removes one, `compact`
/// rebuilds, `crash` exits without closing, `quit` closes. Answers `OK` once durable.
#[test]
fn readers_child() -> Result<()> {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return Ok(()); // run as an ordinary test: nothing to do
    };
    // Never outlive a test that stopped talking.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_mins(2));
        std::process::exit(3);
    });
    let db = Db::open(&path)?;
    println!("\nREADY");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["more", from, to, round] => {
                let (from, to, round): (u32, u32, u32) =
                    (from.parse()?, to.parse()?, round.parse()?);
                for k in from..to {
                    // Half as single writes, half as two-key transactions.
                    if k % 2 == 0 {
                        db.set_nowait(k, value(k, round))?;
                    } else {
                        let tx = db.transaction();
                        tx.set_nowait(k, value(k, round))?;
                        tx.commit()?;
                    }
                }
                db.commit()?;
            }
            ["rm", k] => db.remove(&k.parse::<u32>()?)?,
            ["compact"] => db.compact()?,
            ["crash"] => {
                println!("OK");
                std::process::exit(0); // no close, no drop: the session's files stay
            }
            ["quit"] => {
                db.close()?;
                println!("OK");
                return Ok(());
            }
            other => bail!("unknown command {other:?}"),
        }
        println!("OK");
    }
    Ok(())
}

struct Owner {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Owner {
    fn start(path: &Path) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                &common::test_name(module_path!(), "readers_child"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut owner = Owner {
            child,
            stdin,
            stdout,
        };
        owner.until("READY")?;
        Ok(owner)
    }

    fn until(&mut self, word: &str) -> Result<()> {
        let mut line = String::new();
        while line.trim() != word {
            line.clear();
            ensure!(
                self.stdout.read_line(&mut line)? > 0,
                "the owner ended before it said {word}"
            );
        }
        Ok(())
    }

    /// Sends a command and waits until the owner has made it durable.
    fn run(&mut self, cmd: &str) -> Result<()> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.until("OK")
    }

    fn wait(mut self) -> Result<()> {
        drop(self.stdin);
        let status = self.child.wait()?;
        ensure!(status.success(), "the owner failed: {status}");
        Ok(())
    }
}

fn read_only(path: &Path) -> Result<Db> {
    Ok(Options::new().read_only(true).open_as(path)?)
}

fn expect(db: &Db, want: &BTreeMap<u32, String>) -> Result<()> {
    let got: BTreeMap<u32, String> = db.snapshot().into_iter().collect();
    if got != *want {
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).collect();
        bail!(
            "reader shows {} keys, want {}; missing {missing:?}, extra {extra:?}",
            got.len(),
            want.len()
        );
    }
    Ok(())
}

fn is_read_only<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) -> Result<()> {
    match r {
        Err(Error::ReadOnly { path }) if path.ends_with("d.db") => Ok(()),
        other => bail!("{what} on a read-only handle gave {other:?}"),
    }
}

fn writes_are_refused(db: &Db) -> Result<()> {
    is_read_only("set", db.set(1, "x".into()))?;
    is_read_only("set_nowait", db.set_nowait(1, "x".into()))?;
    is_read_only("remove", db.remove(&1))?;
    is_read_only("remove_nowait", db.remove_nowait(&1))?;
    let mut delta = Delta::new();
    delta.set(1, "x".to_string())?;
    is_read_only("commit_transaction", db.commit_transaction(delta.clone()))?;
    is_read_only(
        "submit_transaction_request",
        db.submit_transaction_request(delta),
    )?;
    let tx = db.transaction();
    tx.set_nowait(1, "x".into())?; // the view's delta takes it; its commit refuses
    is_read_only("a transaction's commit", tx.commit())?;
    is_read_only("compact", db.compact())?;
    is_read_only(
        "transact",
        db.transact(|tx| -> Result<(), Error> { tx.set_nowait(1, "x".into()) }),
    )?;
    db.commit()?; // nothing pending: returns at once
    Ok(())
}

#[test]
fn a_reader_follows_an_owner_in_another_process() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let dir = TempDir::new("readers-follow")?;
    let path = dir.join("d.db");
    let mut owner = Owner::start(&path)?;
    let mut want = BTreeMap::new();
    owner.run("more 0 100 0")?;
    want.extend((0..100).map(|k| (k, value(k, 0))));

    let reader = read_only(&path)?;
    expect(&reader, &want)?;
    writes_are_refused(&reader)?;
    expect(&reader, &want)?;

    // Batches appended in the same session.
    owner.run("more 50 150 1")?;
    owner.run("rm 3")?;
    want.extend((50..150).map(|k| (k, value(k, 1))));
    want.remove(&3);
    let r = reader.refresh()?;
    ensure!(!r.reloaded && r.records == 101, "{r:?}");
    ensure!(
        reader.stats().file_len == r.valid_len,
        "{:?}",
        reader.stats()
    );
    expect(&reader, &want)?;
    ensure!(reader.refresh()?.records == 0, "nothing new");

    // A rebuild: a new `P` under the same name, then more batches in it.
    owner.run("compact")?;
    owner.run("more 150 170 2")?;
    want.extend((150..170).map(|k| (k, value(k, 2))));
    let r = reader.refresh()?;
    ensure!(r.reloaded, "{r:?}");
    expect(&reader, &want)?;
    owner.run("more 0 10 3")?;
    want.extend((0..10).map(|k| (k, value(k, 3))));
    want.remove(&3);
    want.insert(3, value(3, 3));
    ensure!(!reader.refresh()?.reloaded);
    expect(&reader, &want)?;

    // A second reader opened now sees the same, and the owner's close changes nothing.
    expect(&read_only(&path)?, &want)?;
    owner.run("quit")?;
    owner.wait()?;
    reader.refresh()?;
    expect(&reader, &want)?;
    writes_are_refused(&reader)?;
    Ok(())
}

/// Names, bytes and modification times of every file in `dir`.
fn files(dir: &Path) -> Result<BTreeMap<String, (Vec<u8>, SystemTime)>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            (std::fs::read(e.path())?, m.modified()?),
        );
    }
    Ok(out)
}

#[test]
fn a_read_only_open_of_a_crash_left_database_changes_no_file() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let dir = TempDir::new("readers-crash")?;
    let path = dir.join("d.db");
    let mut owner = Owner::start(&path)?;
    owner.run("more 0 300 0")?;
    owner.run("crash")?;
    owner.wait()?;
    // A torn batch and a stale backup on top of what the crash left.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
        let len = std::fs::metadata(&path)?.len();
        let end = std::fs::read(&path)?
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1) as u64;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(end.min(len)))?;
        f.write_all(b"{\"key\":999,\"value\":\"torn")?;
    }
    std::fs::write(
        dir.join("d.db.backup"),
        b"{\"key\":1,\"value\":\"stale\"}\n",
    )?;
    std::thread::sleep(Duration::from_millis(20)); // so a write would move the times
    let before = files(dir.path())?;
    ensure!(
        before.contains_key("d.db.truncate_flag"),
        "the crash left no session flag: {:?}",
        before.keys()
    );

    let reader = read_only(&path)?;
    let want: BTreeMap<u32, String> = (0..300).map(|k| (k, value(k, 0))).collect();
    expect(&reader, &want)?;
    let report = reader.recovery_report().clone();
    ensure!(
        report.discarded_stale_backup && report.cut.is_some(),
        "{report:?}"
    );
    reader.refresh()?;
    expect(&reader, &want)?;
    drop(reader);
    ensure!(
        files(dir.path())? == before,
        "a read-only open changed a file"
    );

    // The owner's recovery agrees with what the reader showed.
    let db = Db::open(&path)?;
    expect(&db, &want)?;
    db.close()?;
    Ok(())
}

#[test]
fn a_read_only_open_needs_read_permission_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let dir = TempDir::new("readers-perm")?;
    let path = dir.join("d.db");
    let db = Db::open(&path)?;
    db.set(7, "seven".into())?;
    db.close()?;
    let set_mode =
        |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    set_mode(&path, 0o444)?;
    set_mode(dir.path(), 0o555)?;
    let root = std::fs::write(dir.join("probe"), b"").is_ok();
    let r = (|| -> Result<()> {
        if root {
            println!("note: running as root, permission bits do not stop writes; only the open is checked");
        } else {
            ensure!(
                Db::open(&path).is_err(),
                "a read-write open needs write permission"
            );
        }
        let reader = read_only(&path)?;
        ensure!(reader.get(&7).as_deref() == Some("seven"));
        ensure!(reader.refresh()?.records == 0);
        Ok(())
    })();
    if root {
        let _ = std::fs::remove_file(dir.join("probe"));
    }
    set_mode(dir.path(), 0o755)?;
    set_mode(&path, 0o644)?;
    r?;
    let names = dir.files()?;
    ensure!(names == ["d.db"], "{names:?}");
    Ok(())
}

#[test]
fn a_read_only_open_of_nothing_creates_nothing() -> Result<()> {
    let dir = TempDir::new("readers-none")?;
    let path = dir.join("d.db");
    match Options::new()
        .read_only(true)
        .open_as::<u32, String, common::Kind>(&path)
    {
        Err(Error::NotFound { .. }) => {}
        other => bail!("{other:?}"),
    }
    ensure!(dir.files()?.is_empty());
    // A read-write handle is always current: refresh does nothing.
    let db = Db::open(&path)?;
    db.set(1, "a".into())?;
    ensure!(db.refresh()? == ptvp35::Refreshed::default());
    db.close()?;
    Ok(())
}

#[test]
fn a_refreshing_reader_never_sees_part_of_a_transaction() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let dir = TempDir::new("readers-atomic")?;
    let path = dir.join("d.db");
    let owner = rebuilding_owner(&path)?;
    let reader = Options::new()
        .read_only(true)
        .open_as::<u32, u32, common::Kind>(&path)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut checks, mut reloads) = (0u32, 0u32);
    std::thread::scope(|s| -> Result<()> {
        let writer = s.spawn(|| commit_pairs(&owner, 2_000u32, &done));
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let r = reader.refresh()?;
            reloads += u32::from(r.reloaded);
            let (a, b) = (reader.get(&1), reader.get(&1_000_003));
            ensure!(a == b || b.is_none() && a == Some(0), "split: {a:?} {b:?}");
            checks += 1;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(())
    })?;
    reader.refresh()?;
    ensure!(
        reader.snapshot() == owner.snapshot(),
        "the reader did not catch up"
    );
    println!(
        "{checks} checks, {reloads} reloads, {} rebuilds",
        owner.stats().rebuilds
    );
    owner.close()?;
    Ok(())
}

/// A `Snapshot` opened while the owner commits transactions and rebuilds the file streams
/// one state: never part of a transaction, never older than one it saw before, and in
/// the end equal to the owner's.
#[test]
fn a_streamed_snapshot_never_sees_part_of_a_transaction() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let dir = TempDir::new("readers-snapshot")?;
    let path = dir.join("d.db");
    let owner = rebuilding_owner(&path)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let state = |path: &Path| -> Result<BTreeMap<u32, u32>> {
        let mut snap = ptvp35::Snapshot::open(path)?;
        let mut map = BTreeMap::new();
        snap.for_each::<u32, u32>(|e| match e.value {
            Some(v) => {
                map.insert(e.key, v);
            }
            None => {
                map.remove(&e.key);
            }
        })?;
        Ok(map)
    };
    let mut checks = 0u32;
    std::thread::scope(|s| -> Result<()> {
        let writer = s.spawn(|| commit_pairs(&owner, 1_000u32, &done));
        let mut last = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let map = state(&path)?;
            let (a, b) = (map.get(&1).copied(), map.get(&1_000_003).copied());
            ensure!(a == b || b.is_none() && a == Some(0), "split: {a:?} {b:?}");
            let a = a.unwrap_or_default();
            ensure!(a >= last, "went back from {last} to {a}");
            last = a;
            checks += 1;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(())
    })?;
    let want: BTreeMap<u32, u32> = owner.snapshot().into_iter().collect();
    ensure!(state(&path)? == want, "the last snapshot differs");
    println!("{checks} snapshots, {} rebuilds", owner.stats().rebuilds);
    owner.close()?;
    ensure!(state(&path)? == want, "after the close");
    Ok(())
}

/// An owner that rebuilds its file every 16 KiB of dead records, with key 1 set to 0.
fn rebuilding_owner(path: &Path) -> Result<TestDb<u32, u32>> {
    let owner = Options::new()
        .compact_floor(16 << 10)
        .open_as::<u32, u32, common::Kind>(path)?;
    owner.set(1, 0)?;
    Ok(owner)
}

/// Commits `n` transactions that set keys 1 and 1,000,003 to the same value (and a key
/// among 97 others, so that dead records pile up and rebuilds happen), then sets `done`.
fn commit_pairs(
    owner: &TestDb<u32, u32>,
    n: u32,
    done: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let r = (|| -> Result<()> {
        for i in 1..=n {
            let tx = owner.transaction();
            tx.set_nowait(1, i)?;
            tx.set_nowait(1_000_003, i)?;
            tx.set_nowait(i % 97 + 10, i)?;
            tx.commit()?;
        }
        Ok(())
    })();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    r
}
