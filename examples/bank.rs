//! A concurrent bank: threads move money between accounts through `transact`, and the
//! total never changes, in memory or on disk.
//!
//! ```text
//! cargo run --release --example bank [PATH] [THREADS] [TRANSFERS_PER_THREAD]
//! ```

use std::time::Instant;

use ptvp35::{DbConnection, Delta};

const ACCOUNTS: u64 = 10;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .map_or_else(|| std::env::temp_dir().join("bank.db"), Into::into);
    let threads: u64 = args.next().map_or(Ok(4), |a| a.parse())?;
    let per_thread: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;

    let db = DbConnection::<String, i64>::open(&path)?;
    if db.is_empty() {
        let mut d = Delta::new();
        for i in 0..ACCOUNTS {
            d.set(format!("acct{i}"), 1000)?;
        }
        db.commit_transaction(d)?;
    }
    let total = |db: &DbConnection<String, i64>| -> i64 {
        (0..ACCOUNTS)
            .filter_map(|i| db.get(&format!("acct{i}")))
            .sum()
    };
    println!(
        "{}: {} accounts, total {}",
        path.display(),
        ACCOUNTS,
        total(&db)
    );

    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let db = &db;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut x = 0x2545_F491_4F6C_DD1D_u64 ^ (t + 1);
                    for _ in 0..per_thread {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let from = format!("acct{}", x % ACCOUNTS);
                        let to = format!("acct{}", (x >> 8) % ACCOUNTS);
                        let amount = i64::try_from((x >> 16) % 100)?;
                        db.transact(|tx| -> anyhow::Result<()> {
                            let a = tx.get(&from).unwrap_or(0);
                            tx.set_nowait(from.clone(), a - amount)?;
                            let b = tx.get(&to).unwrap_or(0);
                            tx.set_nowait(to.clone(), b + amount)?;
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let n = threads * per_thread;
    let stats = db.stats();
    #[allow(clippy::cast_precision_loss)] // a rate for display
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{n} durable transfers from {threads} threads in {elapsed:.2?} ({rate:.0}/s), {} syncs",
        stats.syncs
    );
    println!("total in memory: {}", total(&db));
    db.close()?;
    let db = DbConnection::<String, i64>::open(&path)?;
    println!("total after reopen: {}", total(&db));
    db.close()?;
    Ok(())
}
