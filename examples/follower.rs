//! A follower: one thread owns a database and commits to it, another follows it with a
//! read-only handle, refreshing every few milliseconds, as a dashboard or a cache in
//! another process would. Run with `cargo run --example follower`.

use std::time::Duration;

use ptvp35::{DbConnection, Options};

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ptvp35-follower-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("events.db");
    let owner = DbConnection::<String, u64>::open(&path)?;
    owner.set("count".into(), 0)?;

    std::thread::scope(|s| -> anyhow::Result<()> {
        let writer = s.spawn(|| -> anyhow::Result<()> {
            for n in 1..=50u64 {
                let tx = owner.transaction();
                tx.set_nowait("count".into(), n)?;
                tx.set_nowait(format!("event-{n}"), n * n)?;
                tx.commit()?; // durable; a follower sees both keys or neither
                if n == 25 {
                    owner.compact()?; // a new file under the same name: the follower reloads
                }
            }
            Ok(())
        });

        // In a real deployment this is another process; it takes no lock and writes nothing.
        let follower: DbConnection<String, u64> = Options::new().read_only(true).open(&path)?;
        loop {
            let news = follower.refresh_with(|key, value| match value {
                Some(v) => println!("{key} = {v}"),
                None => println!("{key} removed"),
            })?;
            if news.reloaded {
                println!("(the owner rebuilt the file; reloaded)");
            }
            let count = follower.get("count").unwrap_or(0);
            if count > 0 {
                // A transaction is never split: its event is there too.
                assert_eq!(follower.get(&format!("event-{count}")), Some(count * count));
            }
            if count == 50 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        follower.backup_to(dir.join("events-copy.db"))?;
        println!("followed to the end; backup written");
        Ok(())
    })?;
    owner.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
