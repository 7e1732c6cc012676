//! Workload 7: what the read-back check costs on the commit path. Encodes N typical records
//! (a `k%08d` key and the ~100-byte `Val` struct, or a small `serde_json::Value` object)
//! as `set` does, with the check that decodes each line back and compares, and without it.
//! CPU only: no file, no writer thread.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::data::{key, val, Summary};
use crate::report::{ratio, sum, Table};
use crate::workloads::Cfg;

/// Nanoseconds per record to encode `records` as `DbConnection::set` does (a fresh
/// 64-byte line buffer each), with or without the read-back check.
fn time<K, V>(records: &[(K, V)], verify: bool) -> Result<f64>
where
    K: Serialize + DeserializeOwned + Eq,
    V: Serialize + DeserializeOwned,
{
    let t = Instant::now();
    for (k, v) in records {
        let mut line = Vec::with_capacity(64);
        ptvp35::bench_encode_set(k, v, &mut line, verify)?;
        black_box(line);
    }
    Ok(t.elapsed().as_secs_f64() * 1e9 / records.len() as f64)
}

/// Alternates the two variants `reps` times (after one warm-up each), so that the noise
/// of a shared machine falls on both alike; returns (without, with) summaries.
fn measure<K, V>(records: &[(K, V)], reps: usize) -> Result<(Summary, Summary)>
where
    K: Serialize + DeserializeOwned + Eq,
    V: Serialize + DeserializeOwned,
{
    time(records, false)?;
    time(records, true)?;
    let (mut plain, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(3) {
        plain.push(time(records, false)?);
        checked.push(time(records, true)?);
    }
    Ok((Summary::of(&plain), Summary::of(&checked)))
}

fn ns(x: f64) -> String {
    format!("{x:.0} ns")
}

pub fn encode(cfg: &Cfg) -> Result<()> {
    let n: u64 = if cfg.quick { 100_000 } else { 300_000 };
    let structs: Vec<(String, crate::data::Val)> = (0..n).map(|i| (key(i), val(i, 1))).collect();
    let json: Vec<(String, serde_json::Value)> = (0..n)
        .map(|i| {
            let v = val(i, 2);
            let json = serde_json::json!({
                "name": v.name, "score": v.score, "tags": v.tags, "active": v.active,
            });
            (key(i), json)
        })
        .collect();
    let mut t = Table::new(
        &format!("7. Encoding a record on the commit path, {n} records (CPU only)"),
        &["value", "without check", "with check", "ratio (medians)"],
    );
    let (plain, checked) = measure(&structs, cfg.reps)?;
    t.row(vec![
        "`Val` struct (~100 B of JSON)".to_owned(),
        sum(plain, ns),
        sum(checked, ns),
        ratio(checked.med, plain.med),
    ]);
    let (plain, checked) = measure(&json, cfg.reps)?;
    t.row(vec![
        "`serde_json::Value` object, 4 fields".to_owned(),
        sum(plain, ns),
        sum(checked, ns),
        ratio(checked.med, plain.med),
    ]);
    t.notes.push(
        "Per record, as `set` encodes it: the `{\"key\":K,\"value\":V}` line into a fresh \
         buffer; \"with check\" also decodes the line back with the reader's decoder and \
         compares the copy's serde trace with the original's (issue 9, item 3). Median \
         (min–max) of the repetitions, the two variants alternated."
            .to_owned(),
    );
    t.print();
    Ok(())
}
