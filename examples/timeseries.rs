//! An ordered database of time-series readings: keys `(sensor, unix time)` in order, so
//! one sensor's readings over an hour are one range scan, the latest reading is `last` of
//! a range, and a compaction writes the file in key order.
//!
//! ```text
//! cargo run --example timeseries
//! ```

use ptvp35::{DbConnection, Delta, Options, Ordered};

/// A reading's key: the sensor, then the time in seconds, compared in that order.
type At = (String, u64);

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ptvp35-timeseries-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("readings.db");
    let db: DbConnection<At, f64, Ordered> = Options::new().open_ordered(&path)?;

    // A day of readings every minute from three sensors, one durable batch per hour.
    let start = 1_764_115_200; // 2025-11-26 00:00 UTC
    for hour in 0..24u64 {
        let mut batch = Delta::new();
        for minute in 0..60u64 {
            let t = start + hour * 3600 + minute * 60;
            for (sensor, base) in [("attic", 11.0), ("boiler", 62.0), ("cellar", 9.5)] {
                let wobble = f64::from(u32::try_from((t / 60) % 7)?) * 0.1;
                batch.set((sensor.to_string(), t), base + wobble)?;
            }
        }
        db.commit_transaction(batch)?;
    }
    println!("{} readings", db.len());

    // One sensor, one hour: a range over the ordered keys.
    let from = ("boiler".to_string(), start + 9 * 3600);
    let to = ("boiler".to_string(), start + 10 * 3600);
    let hour: Vec<f64> = db.range(from..to).map(|(_, v)| v).collect();
    let mean = hour.iter().sum::<f64>() / f64::from(u32::try_from(hour.len())?);
    println!(
        "boiler 09:00-10:00: {} readings, mean {mean:.2}",
        hour.len()
    );

    // The latest reading of each sensor: the last key of the sensor's range.
    for sensor in ["attic", "boiler", "cellar"] {
        let all = (sensor.to_string(), 0)..=(sensor.to_string(), u64::MAX);
        if let Some(((_, t), v)) = db.range(all).last() {
            println!("{sensor}: {v:.1} at +{}s", t - start);
        }
    }

    // Drop the attic's readings older than 12:00, then compact: the file is rewritten in
    // key order, so the same data always gives the same bytes.
    let old: Vec<At> = db
        .range(("attic".to_string(), 0)..("attic".to_string(), start + 12 * 3600))
        .map(|(k, _)| k)
        .collect();
    let mut cleanup = Delta::new();
    for k in &old {
        cleanup.remove(k)?;
    }
    db.commit_transaction(cleanup)?;
    db.compact()?;
    println!(
        "removed {} old readings; first key now {:?}",
        old.len(),
        db.first().map(|(k, _)| k)
    );
    db.close()?;

    let reopened: DbConnection<At, f64, Ordered> = Options::new().open_ordered(&path)?;
    assert_eq!(reopened.len(), 24 * 60 * 3 - old.len());
    reopened.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
