//! The main job: open a database (a named file, or `demo.db` in the system's temporary
//! directory), write to it, close it, reopen it and print what was found.
//!
//! ```text
//! cargo run --release --example demo [PATH]
//! ```

use std::time::Instant;

use anyhow::Context;
use ptvp35::{DbConnection, Delta};
use serde_json::json;

type Db = DbConnection<(String, u64), serde_json::Value>;

fn main() -> anyhow::Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| std::env::temp_dir().join("demo.db"), Into::into);
    println!("database: {}", path.display());

    let db: Db = DbConnection::open(&path).with_context(|| format!("open {}", path.display()))?;
    let report = db.recovery_report();
    println!(
        "opened with {} keys{}",
        db.len(),
        if report.was_clean() {
            String::new()
        } else {
            format!(" (recovery: {report:?})")
        }
    );
    let run = db.len() as u64;

    // One durable write.
    let start = Instant::now();
    db.set(
        ("run".into(), run),
        json!({"started": "now", "keys_before": run}),
    )?;
    println!("durable set in {:?}", start.elapsed());

    // A transaction: every key or none, durable on return.
    let mut delta = Delta::new();
    for i in 0..100 {
        delta.set(("item".into(), i), json!({"run": run, "square": i * i}))?;
    }
    let start = Instant::now();
    db.commit_transaction(delta)?;
    println!("100-key transaction in {:?}", start.elapsed());

    // Concurrent durable writes share syncs (group commit).
    let before = db.stats();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let db = &db;
            s.spawn(move || -> anyhow::Result<()> {
                for i in 0..100 {
                    db.set(("thread".into(), t * 1000 + i), json!(i))?;
                }
                Ok(())
            });
        }
    });
    let after = db.stats();
    println!(
        "800 durable sets from 8 threads in {:?}: {} syncs",
        start.elapsed(),
        after.syncs - before.syncs
    );
    db.close()?;

    let db: Db = DbConnection::open(&path)?;
    println!(
        "reopened: {} keys; run {run} = {}; item 7 = {}",
        db.len(),
        db.get(&("run".into(), run)).unwrap_or_default(),
        db.get(&("item".into(), 7)).unwrap_or_default()
    );
    let stats = db.stats();
    println!("file: {} bytes", stats.file_len);
    db.close()?;
    Ok(())
}
