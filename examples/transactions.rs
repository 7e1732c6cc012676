//! Transactions: guards that submit on drop and roll back on panic, nesting, and
//! `transact` for read-modify-write.
//!
//! ```text
//! cargo run --example transactions
//! ```

use ptvp35::{DbConnection, Delta};

fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("transactions-{}.db", std::process::id()));
    let db = DbConnection::<String, i64>::open(&path)?;

    // A delta: several keys, all durable or none.
    let mut setup = Delta::new();
    setup.set("alice".into(), 100)?;
    setup.set("bob".into(), 50)?;
    db.commit_transaction(setup)?;
    println!("setup: alice={:?} bob={:?}", db.get("alice"), db.get("bob"));

    // A guard: reads its own writes, submits when dropped.
    {
        let tx = db.transaction();
        tx.set_nowait("carol".into(), 10)?;
        println!(
            "inside the guard carol={:?}, outside {:?}",
            tx.get("carol"),
            db.get("carol")
        );
    }
    println!(
        "after drop carol={:?} (visible; durable after commit)",
        db.get("carol")
    );
    db.commit()?;

    // Nesting: a child submits into its parent; the parent's rollback discards both.
    let outer = db.transaction();
    outer.set_nowait("dave".into(), 1)?;
    {
        let inner = outer.transaction();
        inner.set_nowait("erin".into(), 2)?;
    }
    println!("outer sees erin={:?}", outer.get("erin"));
    outer.rollback();
    println!(
        "after rollback dave={:?} erin={:?}",
        db.get("dave"),
        db.get("erin")
    );

    // A panic inside a guard rolls it back. (The hook keeps the demo's output quiet.)
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tx = db.transaction();
        tx.set_nowait("alice".into(), 0).expect("serializable");
        panic!("oops");
    }));
    std::panic::set_hook(hook);
    println!(
        "after a panic (caught: {}) alice={:?}",
        r.is_err(),
        db.get("alice")
    );

    // Read-modify-write from threads: `transact` checks what it read and retries.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let db = &db;
            s.spawn(move || {
                for _ in 0..25 {
                    db.transact(|tx| -> anyhow::Result<()> {
                        let a = tx.get("alice").unwrap_or(0);
                        let b = tx.get("bob").unwrap_or(0);
                        tx.set_nowait("alice".into(), a - 1)?;
                        tx.set_nowait("bob".into(), b + 1)?;
                        Ok(())
                    })
                    .expect("transfer");
                }
            });
        }
    });
    let (a, b) = (db.get("alice").unwrap_or(0), db.get("bob").unwrap_or(0));
    println!(
        "after 100 concurrent transfers: alice={a} bob={b} total={}",
        a + b
    );
    db.close()?;
    std::fs::remove_file(&path)?;
    Ok(())
}
