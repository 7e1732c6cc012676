//! A value the writer accepts reads back as itself (issue 9, item 3): what would not is
//! refused at the call with `Error::Serialize`, and nothing changes.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{ensure, Result};
use common::{TempDir, TestDb};
use ptvp35::{DbConnection, Delta, Error};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `depth` nested one-element arrays around `1`.
fn nested(depth: usize) -> Value {
    let mut v = Value::from(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

fn is_refused<T: std::fmt::Debug>(r: ptvp35::Result<T>, what: &str) -> Result<String> {
    match r {
        Err(Error::Serialize { what: w, reason }) if w == what => Ok(reason),
        other => anyhow::bail!("expected the {what} to be refused, got {other:?}"),
    }
}

/// Before the fix, the deep value was acknowledged and the file then refused to open.
#[test]
fn a_value_nested_deeper_than_the_reader_reads_is_refused_and_the_file_opens() -> Result<()> {
    let dir = TempDir::new("deep")?;
    let p = dir.join("d.db");
    let db = TestDb::<String, Value>::open(&p)?;
    db.set("a".into(), Value::from(1))?;
    let mut deepest_ok = None;
    for depth in 120..140 {
        match db.set(format!("d{depth}"), nested(depth)) {
            Ok(()) => deepest_ok = Some(depth),
            Err(e) => {
                let reason = is_refused::<()>(Err(e), "value")?;
                ensure!(reason.contains("nested deeper"), "{reason}");
            }
        }
    }
    let deepest = deepest_ok.unwrap_or_default();
    ensure!((120..139).contains(&deepest), "deepest accepted: {deepest}");
    ensure!(db.get(&format!("d{}", deepest + 1)).is_none());
    ensure!(db.len() == 1 + deepest - 119);
    // The same through a transaction.
    let r = db.transact(|t| t.set_nowait("t".into(), nested(deepest + 1)));
    is_refused(r, "value")?;
    ensure!(db.get("t").is_none());
    db.close()?;

    let db = TestDb::<String, Value>::open(&p)?;
    ensure!(db.get(&format!("d{deepest}")) == Some(nested(deepest)));
    ensure!(db.len() == 1 + deepest - 119);
    db.close()?;
    Ok(())
}

/// Before the fix, `Some(None)` was written as `null` and read back as `None`.
#[test]
fn some_none_is_refused_and_none_keeps_its_meaning() -> Result<()> {
    let dir = TempDir::new("somenone")?;
    let p = dir.join("o.db");
    let db = DbConnection::<String, Option<Option<u8>>>::open(&p)?;
    db.set("none".into(), None)?;
    db.set("some".into(), Some(Some(1)))?;
    db.set("x".into(), Some(Some(2)))?;
    is_refused(db.set("x".into(), Some(None)), "value")?;
    ensure!(db.get("x") == Some(Some(Some(2))), "the map changed");
    let mut d = Delta::new();
    d.set("y".into(), Some(Some(3)))?;
    is_refused(d.set("z".into(), Some(None)), "value")?;
    db.commit_transaction(d)?;
    db.close()?;

    let db = DbConnection::<String, Option<Option<u8>>>::open(&p)?;
    ensure!(db.get("none") == Some(None));
    ensure!(db.get("some") == Some(Some(Some(1))));
    ensure!(db.get("x") == Some(Some(Some(2))));
    ensure!(db.get("y") == Some(Some(Some(3))));
    ensure!(db.len() == 4);
    db.close()?;

    // Keys: two keys that JSON writes alike would merge into one.
    let p = dir.join("k.db");
    let db = DbConnection::<Option<Option<u8>>, u8>::open(&p)?;
    db.set(None, 1)?;
    is_refused(db.set(Some(None), 2), "key")?;
    is_refused(db.remove(&Some(None)), "key")?;
    ensure!(db.len() == 1);
    db.close()?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Short { x: u8 },
    Long { x: u8, y: u8 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
    tags: HashSet<String>,
    counts: HashMap<String, f64>,
    loose: Vec<Loose>,
}

/// Whatever the writer accepts reopens as itself; what it refuses leaves the map alone.
#[test]
fn every_accepted_value_reopens_as_itself() -> Result<()> {
    let dir = TempDir::new("itself")?;
    let p = dir.join("i.db");
    let db = TestDb::<u32, Doc>::open(&p)?;
    let mut written = BTreeMap::new();
    for i in 0..40u8 {
        let doc = Doc {
            title: format!("t{i} \u{e9}\u{1f600}"),
            note: (i % 2 == 0).then(|| "n".to_owned()),
            extra: (0..i % 4)
                .map(|j| (format!("e{j}"), Value::from(f64::from(j) / 7.0)))
                .collect(),
            tags: (0..i % 5).map(|j| format!("tag{j}")).collect(),
            counts: (0..i % 6)
                .map(|j| (format!("c{j}"), -f64::from(j) * 1e-300))
                .collect(),
            loose: vec![Loose::Short { x: i }],
        };
        db.set(u32::from(i), doc.clone())?;
        written.insert(u32::from(i), doc);
    }
    // Accepted by serde_json, but not read back as written: refused, nothing changed.
    let mut bad = written[&1].clone();
    bad.loose.push(Loose::Long { x: 1, y: 2 });
    is_refused(db.set(1, bad), "value")?;
    let mut clash = written[&2].clone();
    clash.extra.insert("title".into(), Value::from("again"));
    is_refused(db.set(2, clash), "value")?;
    ensure!(db.get(&1).as_ref() == written.get(&1));
    ensure!(db.get(&2).as_ref() == written.get(&2));
    db.close()?;

    let db = TestDb::<u32, Doc>::open(&p)?;
    for (k, v) in &written {
        ensure!(db.get(k).as_ref() == Some(v), "key {k} changed");
    }
    db.close()?;
    Ok(())
}
