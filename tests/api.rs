//! The public API of `DbConnection`: round trips, refused values, locking, clean close.

mod common;

use std::collections::{BTreeMap, HashMap};

use anyhow::{ensure, Result};
use common::{TempDir, TestDb};
use ptvp35::{DbConnection, Delta, Error, Options};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct UserId {
    org: String,
    n: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    tags: Vec<String>,
    score: f64,
    extra: Option<BTreeMap<String, i64>>,
}

#[test]
fn round_trips_every_kind_of_key_and_value_across_reopen() -> Result<()> {
    let dir = TempDir::new("kinds")?;

    let p = dir.join("strings.db");
    let db = TestDb::<String, i64>::open(&p)?;
    db.set("ä \"quoted\"\n line".into(), -5)?;
    db.set(String::new(), i64::MAX)?;
    db.close()?;
    let db = TestDb::<String, i64>::open(&p)?;
    ensure!(db.get("ä \"quoted\"\n line") == Some(-5));
    ensure!(db.get(&String::new()) == Some(i64::MAX));
    db.close()?;

    let p = dir.join("tuples.db");
    let db = TestDb::<(String, String), serde_json::Value>::open(&p)?;
    db.set(
        ("tuple".into(), "example".into()),
        json!({"dict": "example", "n": [1, 2.5, null]}),
    )?;
    db.close()?;
    let text = std::fs::read_to_string(&p)?;
    ensure!(
        text.starts_with(r#"{"key":["tuple","example"],"value":{"#),
        "tuples are JSON arrays: {text}"
    );
    let db = TestDb::<(String, String), serde_json::Value>::open(&p)?;
    ensure!(
        db.get(&("tuple".into(), "example".into()))
            == Some(json!({"dict": "example", "n": [1, 2.5, null]}))
    );
    db.close()?;

    let p = dir.join("structs.db");
    let id = UserId {
        org: "acme".into(),
        n: 7,
    };
    let profile = Profile {
        name: "Zoë".into(),
        tags: vec!["a".into(), "b".into()],
        score: 0.1 + 0.2,
        extra: Some(BTreeMap::from([("x".into(), -1)])),
    };
    let db = TestDb::<UserId, Profile>::open(&p)?;
    db.set(id.clone(), profile.clone())?;
    db.close()?;
    let db = TestDb::<UserId, Profile>::open(&p)?;
    ensure!(db.get(&id) == Some(profile), "floats round-trip exactly");
    db.close()?;

    let p = dir.join("options.db");
    let db = TestDb::<u64, Option<u8>>::open(&p)?;
    db.set(1, None)?;
    db.set(2, Some(2))?;
    db.set(3, Some(3))?;
    db.remove(&3)?;
    db.close()?;
    let db = TestDb::<u64, Option<u8>>::open(&p)?;
    ensure!(db.get(&1) == Some(None), "a null value is not a removal");
    ensure!(db.get(&2) == Some(Some(2)));
    ensure!(db.get(&3).is_none() && db.len() == 2);
    db.close()?;
    Ok(())
}

#[test]
fn reads_see_writes_at_once_and_nowait_writes_become_durable_on_commit() -> Result<()> {
    let dir = TempDir::new("nowait")?;
    let p = dir.join("d.db");
    let db = TestDb::<u32, String>::open(&p)?;
    ensure!(db.is_empty());
    db.set_nowait(1, "one".into())?;
    db.set_nowait(2, "two".into())?;
    db.remove_nowait(&2)?;
    ensure!(db.get(&1).as_deref() == Some("one") && !db.contains_key(&2));
    ensure!(db.get_with(&1, String::len) == Some(3));
    db.commit()?;
    let mut seen = Vec::new();
    db.for_each(|k, v| seen.push((*k, v.clone())));
    ensure!(seen == vec![(1, "one".to_string())]);
    ensure!(db.snapshot() == HashMap::from([(1, "one".to_string())]));
    // A crash image taken now holds what commit made durable.
    let copy = dir.join("copy.db");
    common::crash_image(&p, &copy)?;
    let img = TestDb::<u32, String>::open(&copy)?;
    ensure!(img.get(&1).as_deref() == Some("one") && img.len() == 1);
    img.close()?;
    db.close()?;
    Ok(())
}

#[test]
fn refused_values_change_nothing_and_the_database_keeps_working() -> Result<()> {
    let dir = TempDir::new("refused")?;
    let p = dir.join("r.db");
    let db = TestDb::<String, serde_json::Value>::open(&p)?;
    db.set("ok".into(), json!(1))?;
    let len_before = std::fs::metadata(&p)?.len();

    // A map whose keys are not strings cannot be JSON.
    let typed = DbConnection::<String, HashMap<Vec<u8>, u8>>::open(dir.join("m.db"))?;
    let e = typed.set("k".into(), HashMap::from([(vec![1u8], 1u8)]));
    ensure!(
        matches!(e, Err(Error::Serialize { what: "value", .. })),
        "{e:?}"
    );
    ensure!(typed.is_empty());
    typed.close()?;

    // NaN would be written as null and not read back as a float.
    let floats = TestDb::<String, Vec<f64>>::open(dir.join("f.db"))?;
    let e = floats.set("k".into(), vec![1.0, f64::NAN]);
    ensure!(matches!(e, Err(Error::Serialize { .. })), "{e:?}");
    ensure!(e
        .map_err(|e| e.to_string())
        .err()
        .is_some_and(|m| m.contains("NaN")));
    let mut d = Delta::new();
    ensure!(d.set("k".to_string(), vec![f64::INFINITY]).is_err() && d.is_empty());
    floats.set("fine".into(), vec![1.5])?;
    floats.close()?;

    ensure!(std::fs::metadata(&p)?.len() == len_before);
    db.set("still".into(), json!("working"))?;
    ensure!(db.len() == 2);
    db.close()?;
    Ok(())
}

#[test]
fn second_open_is_refused_and_close_releases_the_lock() -> Result<()> {
    let dir = TempDir::new("lock")?;
    let p = dir.join("l.db");
    let db = TestDb::<u8, u8>::open(&p)?;
    match TestDb::<u8, u8>::open(&p) {
        Err(Error::Locked { path }) => ensure!(path == p),
        other => anyhow::bail!("expected Locked, got {other:?}"),
    }
    let msg = TestDb::<u8, u8>::open(&p)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(msg.contains("locked by another owner"), "{msg}");
    db.close()?;
    let again = TestDb::<u8, u8>::open(&p)?;
    again.close()?;
    Ok(())
}

#[test]
fn second_open_from_another_process_is_refused() -> Result<()> {
    if std::env::var_os("PTVP35_LOCK_CHILD").is_some() {
        return Ok(()); // this is the child run of another test, not a test of its own
    }
    let dir = TempDir::new("lockproc")?;
    let p = dir.join("l.db");
    let db = TestDb::<u8, u8>::open(&p)?;
    // The `locked_child` test, run in a child process, tries to open `p`.
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            &common::test_name(module_path!(), "locked_child"),
            "--nocapture",
        ])
        .env("PTVP35_LOCK_CHILD", &p)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(stdout.contains("child: locked"), "child said: {stdout}");
    db.close()?;
    Ok(())
}

#[test]
fn locked_child() {
    let Some(p) = std::env::var_os("PTVP35_LOCK_CHILD") else {
        return;
    };
    match TestDb::<u8, u8>::open(p) {
        Err(Error::Locked { .. }) => println!("child: locked"),
        other => println!("child: unexpected {other:?}"),
    }
}

#[test]
fn clean_close_leaves_only_the_main_file() -> Result<()> {
    let dir = TempDir::new("close")?;
    let p = dir.join("c.db");
    let db = TestDb::<u32, u32>::open(&p)?;
    ensure!(
        dir.files()? == ["c.db", "c.db.truncate", "c.db.truncate_flag"],
        "a session holds its truncate marker: {:?}",
        dir.files()?
    );
    for i in 0..100 {
        db.set_nowait(i, i)?;
    }
    db.compact()?;
    db.set(1000, 1)?;
    db.close()?;
    ensure!(dir.files()? == ["c.db"], "{:?}", dir.files()?);

    // Drop without close does the same.
    let db = TestDb::<u32, u32>::open(&p)?;
    db.set_nowait(5000, 5)?;
    drop(db);
    ensure!(dir.files()? == ["c.db"], "{:?}", dir.files()?);
    let db = TestDb::<u32, u32>::open(&p)?;
    ensure!(db.get(&5000) == Some(5) && db.len() == 102);
    db.close()?;
    Ok(())
}

#[test]
fn compaction_keeps_data_and_shrinks_the_file() -> Result<()> {
    let dir = TempDir::new("compact")?;
    let p = dir.join("k.db");
    let db = Options::new()
        .compact_ratio(f64::INFINITY)
        .open_as::<u32, String, common::Kind>(&p)?;
    for round in 0..20 {
        for i in 0..100 {
            db.set_nowait(i, format!("round {round}"))?;
        }
    }
    db.commit()?;
    let before = db.stats();
    ensure!(before.rebuild_longest_lock.is_zero() && before.rebuild_install.is_zero());
    let t = std::time::Instant::now();
    db.compact()?;
    let took = t.elapsed();
    let after = db.stats();
    ensure!(after.rebuilds == before.rebuilds + 1);
    // The rebuild's own timings: something was held and installed, within the call.
    ensure!(
        !after.rebuild_longest_lock.is_zero() && after.rebuild_longest_lock < took,
        "{after:?}, compact took {took:?}"
    );
    ensure!(
        !after.rebuild_install.is_zero() && after.rebuild_install < took,
        "{after:?}, compact took {took:?}"
    );
    ensure!(
        after.file_len * 10 < before.file_len,
        "{after:?} vs {before:?}"
    );
    db.set(7, "after".into())?;
    db.close()?;
    let db = TestDb::<u32, String>::open(&p)?;
    ensure!(db.len() == 100);
    ensure!(db.get(&7).as_deref() == Some("after"));
    ensure!(db.get(&8).as_deref() == Some("round 19"));
    db.close()?;
    Ok(())
}

#[test]
fn the_writer_rebuilds_on_its_own_when_the_file_outgrows_the_data() -> Result<()> {
    let dir = TempDir::new("auto")?;
    let p = dir.join("a.db");
    let db = Options::new()
        .compact_ratio(3.0)
        .compact_floor(4096)
        .open_as::<u32, u64, common::Kind>(&p)?;
    for i in 0..2000u64 {
        db.set(u32::try_from(i % 10)?, i)?;
    }
    db.set(100, 0)?;
    // Without rebuilds the file would hold 2001 records (over 50 KiB). A rebuild copies
    // the map on its own thread while appends go on, and the writes appended meanwhile
    // are copied too: under load, a slow copy installs a file that is still long, and
    // the last writes may have left one running. How long the file is at one instant is
    // a race, so wait (bounded) until it is short, with one more write now and then:
    // each lets the writer start a rebuild if none runs and the file has grown.
    let deadline = std::time::Instant::now() + std::time::Duration::from_mins(1);
    let mut s = db.stats();
    let mut nudges = 0u64;
    while s.rebuilds == 0 || s.file_len >= 4096 * 2 {
        ensure!(
            std::time::Instant::now() < deadline,
            "the file did not shrink: {s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        nudges += 1;
        db.set(100, nudges)?;
        s = db.stats();
    }
    db.close()?;
    let db = TestDb::<u32, u64>::open(&p)?;
    ensure!(db.get(&9) == Some(1999) && db.len() == 11);
    db.close()?;
    Ok(())
}

/// A value whose `Serialize` panics on `u32::MAX`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
struct Fragile(u32);

impl Serialize for Fragile {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        assert!(self.0 != u32::MAX, "intended panic in Serialize");
        s.serialize_u32(self.0)
    }
}

/// A key whose `Ord` panics when it meets `u32::MAX` (`Hash` and `Eq` never panic).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Touchy(u32);

impl PartialOrd for Touchy {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Touchy {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        assert!(
            self.0 != u32::MAX && other.0 != u32::MAX,
            "intended panic in Ord"
        );
        self.0.cmp(&other.0)
    }
}

/// `extend` reads the pairs on the caller's thread and serializes and applies them on
/// both: a refused pair stops the reading soon after, and a panic on either thread comes
/// out of `extend` once the chunks before it are in.
#[test]
fn extend_stops_reading_after_a_refused_pair_and_passes_panics_on() -> Result<()> {
    let dir = TempDir::new("extendstop")?;
    let chunk = u32::try_from(ptvp35::EXTEND_CHUNK)?;
    let len = |k: u32| usize::try_from(k).unwrap_or(usize::MAX);
    let db = TestDb::<u32, f64>::open(dir.join("f.db"))?;
    // 20 chunks, a NaN early in the second: the reading stops soon after it.
    let mut read = 0u32;
    let r = db.extend(
        (0..20 * chunk)
            .inspect(|_| read += 1)
            .map(|i| (i, if i == chunk + 3 { f64::NAN } else { 1.0 })),
    );
    ensure!(matches!(r, Err(Error::Serialize { .. })), "{r:?}");
    ensure!(read <= 4 * chunk, "read {read} pairs of {}", 20 * chunk);
    ensure!(db.len() == len(chunk));
    db.close()?;

    // A panic in the caller's iterator, in the third chunk: the first two are in.
    let db = TestDb::<u32, Fragile>::open(dir.join("p.db"))?;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.extend((0..10 * chunk).map(|i| {
            assert!(i != 2 * chunk + 5, "intended panic in the iterator");
            (i, Fragile(i))
        }))
    }));
    ensure!(r.is_err(), "the iterator's panic did not come out");
    ensure!(db.len() == len(2 * chunk), "{} keys", db.len());
    // A panic in `Serialize`, in the second chunk: the first is in.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.extend((0..20 * chunk).map(|i| {
            let v = if i == chunk + 1 { u32::MAX } else { i };
            (10 * chunk + i, Fragile(v))
        }))
    }));
    ensure!(r.is_err(), "the serializer's panic did not come out");
    db.commit()?;
    ensure!(db.len() == len(3 * chunk), "{} keys", db.len());
    db.close()?;
    let db = TestDb::<u32, Fragile>::open(dir.join("p.db"))?;
    ensure!(db.len() == len(3 * chunk));
    db.close()?;

    // A panic in `Ord` where the ordered map applies the second chunk (on the other
    // thread): it comes out here, the first chunk is in, and the reading stops.
    let db = ptvp35::DbConnection::<Touchy, u32, ptvp35::Ordered>::open(dir.join("o.db"))?;
    let mut read = 0u32;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.extend((0..20 * chunk).inspect(|_| read += 1).map(|i| {
            let k = if i == chunk + 7 { u32::MAX } else { i };
            (Touchy(k), i)
        }))
    }));
    ensure!(r.is_err(), "the panic in Ord did not come out");
    ensure!(read <= 4 * chunk, "read {read} pairs of {}", 20 * chunk);
    db.commit()?;
    ensure!(db.len() == len(chunk), "{} keys", db.len());
    db.close()?;
    Ok(())
}

/// `extend` on a read-only handle fails without reading on, and two threads extending
/// one database at once both land whole.
#[test]
fn extend_refused_on_a_read_only_handle_and_shared_by_two_threads() -> Result<()> {
    let dir = TempDir::new("extendmore")?;
    let chunk = u32::try_from(ptvp35::EXTEND_CHUNK)?;
    let p = dir.join("e.db");
    let db = TestDb::<u32, u32>::open(&p)?;
    std::thread::scope(|s| -> Result<()> {
        let a = s.spawn(|| db.extend((0..3 * chunk).map(|i| (i, i))));
        let b = s.spawn(|| db.extend((3 * chunk..6 * chunk).map(|i| (i, i))));
        for t in [a, b] {
            t.join().map_err(|_| anyhow::anyhow!("extend panicked"))??;
        }
        Ok(())
    })?;
    ensure!(db.len() == usize::try_from(6 * chunk)?);
    ensure!((0..6 * chunk).all(|i| db.get(&i) == Some(i)));
    let ro = Options::new()
        .read_only(true)
        .open_as::<u32, u32, common::Kind>(&p)?;
    let mut read = 0u32;
    let r = ro.extend((0..20 * chunk).inspect(|_| read += 1).map(|i| (i, 0)));
    ensure!(matches!(r, Err(Error::ReadOnly { .. })), "{r:?}");
    ensure!(read <= 4 * chunk, "read {read} pairs of {}", 20 * chunk);
    let r = ro.extend([(1, 1)]);
    ensure!(matches!(r, Err(Error::ReadOnly { .. })), "{r:?}");
    ensure!(ro.get(&5) == Some(5));
    drop(ro);
    db.close()?;
    Ok(())
}

/// `extend` loads in chunks of `EXTEND_CHUNK` keys, each atomic; a pair that cannot be
/// stored stops it after the chunks before, which stay (and are durable).
#[test]
fn extend_loads_chunk_by_chunk_in_both_maps_and_stops_at_a_refused_pair() -> Result<()> {
    let dir = TempDir::new("extend")?;
    let chunk = u32::try_from(ptvp35::EXTEND_CHUNK)?;
    let n = chunk * 2 + 10;
    let len = |k: u32| usize::try_from(k).unwrap_or(usize::MAX);
    let p = dir.join("hashed.db");
    let db = TestDb::<u32, f64>::open(&p)?;
    db.set(5, -1.0)?;
    db.extend((0..n).map(|i| (i, f64::from(i))))?;
    ensure!(db.len() == len(n) && db.get(&5) == Some(5.0));
    db.close()?;
    let db = TestDb::<u32, f64>::open(&p)?;
    ensure!(db.len() == len(n) && db.get(&(n - 1)) == Some(f64::from(n - 1)));
    // A NaN in the second chunk: the first chunk goes in, nothing of the second.
    let bad = n + chunk + 3;
    let r = db.extend((n..2 * n).map(|i| (i, if i == bad { f64::NAN } else { 1.0 })));
    ensure!(matches!(r, Err(Error::Serialize { .. })), "{r:?}");
    db.commit()?;
    ensure!(db.len() == len(n + chunk));
    db.close()?;
    let db = TestDb::<u32, f64>::open(&p)?;
    ensure!(db.len() == len(n + chunk));
    db.close()?;

    let p = dir.join("ordered.db");
    let db = ptvp35::DbConnection::<u32, u32, ptvp35::Ordered>::open(&p)?;
    db.extend((0..n).rev().map(|i| (i, i * 2)))?;
    ensure!(db.iter().map(|(k, _)| k).eq(0..n), "key order");
    ensure!(db.first() == Some((0, 0)));
    db.close()?;
    Ok(())
}
