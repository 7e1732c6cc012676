//! One owner across processes: a child process rebuilds its database in a loop while
//! this process tries to open it, as a database and as `inspect`, again and again. Every
//! attempt must be refused with `Locked` while the child lives. The child is this test
//! binary re-run with `PTVP35_OWNER_CHILD` naming the database, so it keeps the map of
//! this build (`owners_ordered.rs`: the ordered map).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::{TempDir, TestDb};

type Db = TestDb<u32, String>;

const CHILD_ENV: &str = "PTVP35_OWNER_CHILD";

/// The file the child creates before it lets the database go.
fn stop_marker(db: &Path) -> PathBuf {
    db.with_file_name("owner-stopping")
}

/// The child: open, say so (and on which map), rebuild for three seconds, close.
#[test]
fn owner_child() -> Result<()> {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return Ok(()); // run as an ordinary test: nothing to do
    };
    let db = Db::open(&path)?;
    for i in 0..200 {
        db.set_nowait(i, "x".repeat(64))?;
    }
    db.commit()?;
    println!("\nOWNER-READY {}", std::any::type_name::<common::Kind>());
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(3) {
        db.compact()?;
        n += 1;
    }
    // From here on an opener may rightly get the database.
    std::fs::write(stop_marker(Path::new(&path)), b"")?;
    db.close()?;
    println!("rebuilds {n}");
    Ok(())
}

#[test]
fn no_other_process_opens_a_database_while_its_owner_rebuilds() -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return Ok(());
    }
    let dir = TempDir::new("owners-process")?;
    let path = dir.join("d.db");
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            &common::test_name(module_path!(), "owner_child"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut line = String::new();
    while !line.contains("OWNER-READY") {
        line.clear();
        ensure!(
            out.read_line(&mut line)? > 0,
            "the child ended before it was ready"
        );
    }
    let map = std::any::type_name::<common::Kind>();
    ensure!(
        line.trim_end().ends_with(map),
        "the child runs another map than this build's {map}: {line:?}"
    );
    let (done, attempts, owned) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for n in 0..2 {
            let (path, done, attempts, owned) = (&path, &done, &attempts, &owned);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let r = if n == 0 {
                        Db::open(path).map(drop)
                    } else {
                        ptvp35::inspect::<u32, String>(path).map(drop)
                    };
                    // Got it while the owner still owned it: it had not said it was
                    // stopping when this open took the lock. (Any refusal is fine:
                    // between the owner's steps a side file may be missing for a moment.)
                    if r.is_ok() && !stop_marker(path).exists() {
                        owned.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let status = child.wait();
        done.store(true, Ordering::Relaxed);
        status
    })?;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest)?;
    let (attempts, owned) = (attempts.into_inner(), owned.into_inner());
    println!("{} {attempts} attempts beside the child", rest.trim());
    ensure!(
        owned == 0,
        "{owned} of {attempts} attempts got a database another process owned"
    );
    ensure!(rest.contains("rebuilds"), "the child failed: {rest}");
    // The database survived all of it, and only its owner touched it.
    let db = Db::open(&path)?;
    ensure!(db.len() == 200, "{} keys", db.len());
    db.close()?;
    Ok(())
}
