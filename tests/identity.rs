//! A database is one file for its whole life: one owner while it is rebuilt, the same
//! mode, owner and links after a rebuild, its own checksum chain in each incarnation, and
//! refusals (not guesses) where a file's identity is in doubt. On the real filesystem.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::{crash_image, TempDir, TestDb};
use ptvp35::{Error, Options};

type Db = TestDb<u32, String>;

fn side(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

/// One thread rebuilds the file in a loop while two others try to open it, as `inspect`
/// and as a database: every attempt must fail with `Locked` while the owner lives (an
/// opener that locked the old file just after the rename got a second owner).
#[test]
fn no_second_owner_while_the_file_is_rebuilt() -> Result<()> {
    // A second owner can wedge the first (its close removes the first's markers): bound
    // the whole run, so that a regression fails instead of hanging.
    common::within(60, owners_race)?
}

fn owners_race() -> Result<()> {
    let dir = TempDir::new("owners")?;
    let path = dir.join("d.db");
    let db = Db::open(&path)?;
    for i in 0..200 {
        db.set_nowait(i, "x".repeat(64))?;
    }
    db.commit()?;
    let stop = AtomicBool::new(false);
    let (opens, second_owners) = (AtomicU64::new(0), AtomicU64::new(0));
    let rebuilds = std::thread::scope(|s| -> Result<u64> {
        for n in 0..2 {
            let (path, stop, opens, second) = (&path, &stop, &opens, &second_owners);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    opens.fetch_add(1, Ordering::Relaxed);
                    let owned = if n == 0 {
                        Db::open(path).is_ok()
                    } else {
                        ptvp35::inspect::<u32, String>(path).is_ok()
                    };
                    if owned {
                        second.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let t = Instant::now();
        let mut rebuilds = 0;
        while t.elapsed() < Duration::from_secs(2) {
            db.compact()?;
            rebuilds += 1;
        }
        stop.store(true, Ordering::Relaxed);
        Ok(rebuilds)
    })?;
    let (opens, second) = (opens.into_inner(), second_owners.into_inner());
    println!("{rebuilds} rebuilds, {opens} attempts to open beside them");
    ensure!(
        second == 0,
        "{second} of {opens} opens got the database during {rebuilds} rebuilds"
    );
    ensure!(rebuilds > 10 && opens > 10, "the race was not exercised");
    db.close()?;
    Ok(())
}

#[cfg(unix)]
#[test]
fn a_rebuild_keeps_the_mode_and_owner() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("mode")?;
    let path = dir.join("d.db");
    Db::open(&path)?.close()?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    // As root (CI), give the file to another user, as a service account would own it.
    let owner = (1234, 1235);
    let root = std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1)).is_ok();
    let db = Db::open(&path)?;
    db.set(1, "a".into())?;
    db.compact()?;
    db.set(2, "b".into())?;
    let m = std::fs::metadata(&path)?;
    ensure!(
        m.mode() & 0o7777 == 0o600,
        "mode {:o} after a rebuild",
        m.mode()
    );
    if root {
        ensure!((m.uid(), m.gid()) == owner, "owner {}:{}", m.uid(), m.gid());
    }
    db.close()?;
    Ok(())
}

#[cfg(unix)]
#[test]
fn a_symlinked_database_stays_a_link_to_one_file() -> Result<()> {
    let dir = TempDir::new("symlink")?;
    std::fs::create_dir(dir.join("real"))?;
    let target = dir.join("real").join("d.db");
    let link = dir.join("link.db");
    std::os::unix::fs::symlink("real/d.db", &link)?;
    let db = Db::open(&link)?;
    db.set(1, "a".into())?;
    db.compact()?;
    db.set(2, "b".into())?;
    db.close()?;
    ensure!(
        std::fs::symlink_metadata(&link)?.file_type().is_symlink(),
        "the rebuild replaced the link by a file"
    );
    let db = Db::open(&target)?;
    ensure!(
        db.get(&1).is_some() && db.get(&2).is_some(),
        "not one database"
    );
    // The link leads to the locked file.
    ensure!(matches!(Db::open(&link), Err(Error::Locked { .. })));
    db.close()?;
    ensure!(
        dir.files()? == ["link.db", "real"],
        "side files next to the link: {:?}",
        dir.files()?
    );
    Ok(())
}

#[cfg(unix)]
#[test]
fn a_main_file_with_other_hard_links_is_refused() -> Result<()> {
    let dir = TempDir::new("hardlink")?;
    let path = dir.join("d.db");
    Db::open(&path)?.close()?;
    std::fs::hard_link(&path, dir.join("other.db"))?;
    match Db::open(&path) {
        Err(Error::Unsupported { path: p, reason }) => {
            ensure!(p == path && reason.contains("hard links"), "{reason}");
        }
        other => anyhow::bail!("opened a file with two names: {other:?}"),
    }
    ensure!(dir.files()? == ["d.db", "other.db"], "{:?}", dir.files()?);
    Ok(())
}

/// ALICE's pessimistic rename: the flag says the backup is the data, and the crash cut
/// the rename after it unlinked both names. The open must not create an empty database
/// over the evidence.
#[test]
fn a_recover_flag_with_neither_file_is_refused_and_kept() -> Result<()> {
    let dir = TempDir::new("neither")?;
    let path = dir.join("d.db");
    std::fs::write(side(&path, ".recover"), b"")?;
    match Db::open(&path) {
        Err(Error::BadSideFile { path: p, .. }) => ensure!(p == side(&path, ".recover")),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
    ensure!(dir.files()? == ["d.db.recover"], "{:?}", dir.files()?);
    Ok(())
}

/// The same rename, cut after it linked the backup as `P` but before it unlinked the
/// old name: both names on one file. The rename happened.
#[cfg(unix)]
#[test]
fn a_backup_that_is_also_the_main_file_means_the_rename_happened() -> Result<()> {
    let dir = TempDir::new("both")?;
    let path = dir.join("d.db");
    let db = Db::open(&path)?;
    db.set(7, "seven".into())?;
    db.close()?;
    std::fs::hard_link(&path, side(&path, ".backup"))?;
    std::fs::write(side(&path, ".recover"), b"")?;
    let db = Db::open(&path)?;
    ensure!(db.get(&7).as_deref() == Some("seven"));
    ensure!(db.recovery_report().restored_from_backup);
    db.close()?;
    ensure!(dir.files()? == ["d.db"], "{:?}", dir.files()?);
    Ok(())
}

/// Stale blocks of an older incarnation of `P` after the count of a newer one whose
/// bytes equal a prefix of the old: the old batches must not validate.
#[test]
fn batches_of_an_older_file_never_validate_in_a_newer_one() -> Result<()> {
    let dir = TempDir::new("stale")?;
    let opts = Options::new().preallocate(false);
    // The old incarnation: an empty file, then one batch, and a crash.
    let old: Db = opts.open_as(dir.join("old.db"))?;
    old.set(1, "from the old file".into())?;
    let old_bytes = std::fs::read(old.path())?;
    // The new incarnation: the same (empty) prefix, its own session, and a crash that
    // left the old file's blocks after its count.
    let new: Db = opts.open_as(dir.join("new.db"))?;
    let image = dir.join("image.db");
    crash_image(new.path(), &image)?;
    std::fs::write(&image, &old_bytes)?;
    let db: Db = opts.open_as(&image)?;
    ensure!(
        db.get(&1).is_none(),
        "a batch of another file validated after a crash"
    );
    ensure!(db.recovery_report().cut.is_some());
    db.close()?;
    old.close()?;
    new.close()?;
    Ok(())
}

/// A count written by the Python library, which counts characters: where the text
/// before it is not ASCII, it may end a line early, and the whole, synced lines after
/// it must not be cut without a word.
#[test]
fn a_character_count_is_refused_not_used_to_cut() -> Result<()> {
    let dir = TempDir::new("chars")?;
    let path = dir.join("d.db");
    // 11 three-byte characters: 22 bytes more than characters, the length of line 2.
    let l1 = "{\"key\": 1, \"value\": \"€€€€€€€€€€€\"}\n";
    let l2 = "{\"key\":2,\"value\":\"v\"}\n";
    assert_eq!(l2.len(), 22);
    let data = format!("{l1}{l2}");
    let chars = data.chars().count();
    assert_eq!(chars, l1.len(), "the character count ends line 1 in bytes");
    std::fs::write(&path, &data)?;
    std::fs::write(side(&path, ".truncate"), (chars as u128).to_le_bytes())?;
    std::fs::write(side(&path, ".truncate_flag"), b"")?;
    match Db::open(&path) {
        Err(Error::BadSideFile { path: p, reason }) => {
            ensure!(p == side(&path, ".truncate"), "{p:?}: {reason}");
        }
        Ok(db) => anyhow::bail!("opened, with key 2: {:?}", db.get(&2)),
        Err(e) => anyhow::bail!("{e}"),
    }
    ensure!(std::fs::read_to_string(&path)? == data, "P was changed");
    ensure!(!side(&path, ".error").exists(), "lines were cut");
    Ok(())
}
