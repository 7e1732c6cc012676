//! Quick start: open, write, read, a transaction, remove, close, reopen, and a look at
//! the files with `ptvp35::inspect`.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use ptvp35::{DbConnection, Health};
use serde::{Deserialize, Serialize};

/// Any `Serialize + Deserialize + Clone` type is a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    score: u32,
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ptvp35-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("users.db");

    // Open (or create) the database: recovery runs first, then the whole file is in memory.
    let db = DbConnection::<u64, User>::open(&path)?;

    // `set` returns once the change is durable; `set_nowait` once it is visible.
    db.set(
        1,
        User {
            name: "ada".into(),
            score: 10,
        },
    )?;
    for id in 2..=5 {
        db.set_nowait(
            id,
            User {
                name: format!("user{id}"),
                score: 0,
            },
        )?;
    }
    db.commit()?; // all four durable, sharing fsyncs

    // Reads never touch the disk.
    println!("user 1: {:?}", db.get(&1));
    println!("{} users", db.len());

    // A transaction: both changes durably, or neither; it reads its own writes.
    let tx = db.transaction();
    let mut ada = tx.get(&1).unwrap_or(User {
        name: "ada".into(),
        score: 0,
    });
    ada.score += 5;
    tx.set_nowait(1, ada)?;
    tx.remove_nowait(&5)?;
    tx.commit()?;

    db.remove(&4)?;
    db.close()?; // only users.db is left

    // Reopen: everything acknowledged is there.
    let db = DbConnection::<u64, User>::open(&path)?;
    assert_eq!(db.get(&1).map(|u| u.score), Some(15));
    assert_eq!(db.len(), 3);
    println!(
        "after reopen: {} users, user 1 = {:?}",
        db.len(),
        db.get(&1)
    );
    db.close()?;

    // Look at the files without opening them (what `ptvp35 check` prints).
    let report = ptvp35::inspect::<u64, User>(&path)?;
    assert_eq!(report.health(), Health::Clean);
    println!(
        "{} records in the file, {} live keys, {} dead records",
        report.records, report.live_keys, report.dead_records
    );

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
