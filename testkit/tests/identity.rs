//! The classes the first crash model missed, on the simulated filesystem: openers racing
//! with rebuilds, a main file that is not durable when the database opens, an open
//! crashed in its first steps after a close whose directory sync failed, and file
//! identity (working directory, symbolic links, hard links). `identity_ordered.rs` runs
//! it on the ordered map.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use common::{Map, TestDb};
use ptvp35::{Error, Fs, Options};
use ptvp35_testkit::{db_path, open_on_as, six_paths, state_of, Fate, Fault, OpKind, Owner, SimFs};

fn opts() -> Options {
    Options::new()
        .compact_ratio(f64::INFINITY)
        .preallocate(false)
}

/// Two threads open the database again and again while its owner rebuilds it: none may
/// become a second owner.
#[test]
fn openers_racing_with_rebuilds_never_own_the_database() -> Result<()> {
    let fs = SimFs::new();
    let db = open_on_as::<Map>(&fs, &opts())?;
    for i in 0..50 {
        db.set(format!("k{i}"), i)?;
    }
    let stop = AtomicBool::new(false);
    let (tries, owners) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..2 {
            let (fs, stop, tries, owners) = (&fs, &stop, &tries, &owners);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    tries.fetch_add(1, Ordering::Relaxed);
                    if open_on_as::<Map>(fs, &opts()).is_ok() {
                        owners.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        for _ in 0..100 {
            db.compact()?;
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    let (tries, owners) = (tries.into_inner(), owners.into_inner());
    ensure!(owners == 0, "{owners} of {tries} opens owned the database");
    ensure!(tries > 0);
    db.close()?;
    Ok(())
}

/// A main file written by another program and not yet durable: what the open shows must
/// survive a power cut right after it (the open syncs `P` before it records a count).
#[test]
fn a_main_file_not_durable_at_open_survives_a_power_cut_after_it() -> Result<()> {
    let fs = SimFs::new();
    let p = db_path();
    let mut f = fs.open(&p, true)?;
    f.write_at(
        0,
        b"{\"key\":\"a\",\"value\":1}\n{\"key\":\"b\",\"value\":2}\n",
    )?;
    fs.sync_dir(p.parent().context("dir")?)?;
    drop(f);
    let db = open_on_as::<Map>(&fs, &opts())?;
    let shown = state_of(&db);
    ensure!(shown.len() == 2, "{shown:?}");
    // The power goes now, with the database open.
    let after = fs.crash_durable();
    drop(db);
    let again = open_on_as::<Map>(&after, &opts()).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    ensure!(
        state_of(&again) == shown,
        "the open showed a state that was lost"
    );
    again.close()?;
    Ok(())
}

/// A close whose last directory sync failed, then an open in the same process that a
/// crash stops at each of its own steps: every state must open again, with every key.
#[test]
fn an_open_after_a_failed_close_survives_a_crash_at_each_step() -> Result<()> {
    let base = SimFs::new();
    let db = open_on_as::<Map>(&base, &opts())?;
    db.set("a".into(), 1)?;
    db.set("b".into(), 2)?;
    let want = state_of(&db);
    // The close: C1 removes the flag, C2's directory sync (the next one) fails.
    base.inject(Fault::eio(OpKind::SyncDir, None, 1));
    ensure!(
        db.close().is_err(),
        "the close should report the failed sync"
    );
    base.clear_faults();
    let probe = base.fork();
    let before = probe.ops();
    drop(open_on_as::<Map>(&probe, &opts())?);
    let open_ops = probe.ops() - before;
    for m in 0..open_ops {
        let fs = base.fork();
        fs.crash_after(m);
        drop(open_on_as::<Map>(&fs, &opts()));
        let entries_lost = fs.crash_with(|_, op| match op.kind {
            OpKind::Create | OpKind::Rename | OpKind::Remove => Fate::Lose,
            _ => Fate::Keep,
        });
        for (name, state) in [
            ("durable", fs.crash_durable()),
            ("seeded", fs.crash_seeded(m)),
            ("entries lost, data kept", entries_lost),
        ] {
            let db = open_on_as::<Map>(&state, &opts())
                .map_err(|e| anyhow::anyhow!("open crashed at its op {m}, {name}: {e}"))?;
            ensure!(state_of(&db) == want, "op {m}, {name}: {:?}", state_of(&db));
            db.close()?;
        }
    }
    Ok(())
}

/// A database opened through a symbolic link, by a relative path, from a working
/// directory that then changes: its rebuilds replace the file the link leads to, in the
/// directory of the open, with its owner and mode.
#[test]
fn a_rebuild_keeps_links_directory_and_owner() -> Result<()> {
    let fs = SimFs::new();
    let real = PathBuf::from("/data/real.db");
    let mut f = fs.open(&real, true)?;
    f.sync_data()?;
    fs.sync_dir(Path::new("/data"))?;
    drop(f);
    let owner = Owner {
        mode: 0o640,
        uid: 7,
        gid: 8,
    };
    fs.set_owner(&real, owner)?;
    fs.symlink(Path::new("../data/real.db"), Path::new("/app/link.db"));
    fs.set_cwd(Path::new("/app"));
    let db: TestDb = opts().filesystem(Arc::new(fs.clone())).open_as("link.db")?;
    db.set("a".into(), 1)?;
    fs.set_cwd(Path::new("/elsewhere"));
    db.compact()?;
    db.set("b".into(), 2)?;
    db.close()?;
    ensure!(
        fs.read_link(Path::new("/app/link.db")).is_some(),
        "the link was replaced"
    );
    ensure!(fs.owner(&real) == Some(owner), "{:?}", fs.owner(&real));
    let names: Vec<PathBuf> = fs.files().into_keys().collect();
    ensure!(names == [real.clone()], "{names:?}");
    let db = open_on_as::<Map>(
        &SimFs::with_files(&BTreeMap::from([(
            db_path(),
            fs.file(&real).unwrap_or_default(),
        )])),
        &opts(),
    )?;
    ensure!(state_of(&db).len() == 2);
    db.close()?;
    Ok(())
}

/// Two names for one main file: refused before anything changes.
#[test]
fn a_hard_linked_main_file_is_refused() -> Result<()> {
    let fs = SimFs::new();
    drop(open_on_as::<Map>(&fs, &opts())?);
    fs.hard_link(&db_path(), Path::new("/db/other.db"))?;
    let before = fs.files();
    match open_on_as::<Map>(&fs, &opts()) {
        Err(Error::Unsupported { .. }) => {}
        other => anyhow::bail!("{other:?}"),
    }
    ensure!(fs.files() == before);
    let _ = six_paths(&db_path());
    Ok(())
}

/// A rebuild that fails after its rename (here: the new count cannot be written) leaves
/// the new file as `P`; the owner must keep it, and its lock, while it lives.
#[test]
fn a_failed_install_after_the_rename_keeps_the_database_locked() -> Result<()> {
    let fs = SimFs::new();
    let db = open_on_as::<Map>(&fs, &opts())?;
    db.set("a".into(), 1)?;
    // The next write of `P.truncate` is R8, after the rename.
    fs.inject(Fault::eio(OpKind::Write, Some("P.truncate"), 1));
    ensure!(db.compact().is_err(), "the install should fail");
    fs.clear_faults();
    match open_on_as::<Map>(&fs, &opts()) {
        Err(Error::Locked { .. }) => {}
        Ok(_) => anyhow::bail!("a second owner opened the database beside the first"),
        Err(e) => anyhow::bail!("{e}"),
    }
    drop(db);
    Ok(())
}
