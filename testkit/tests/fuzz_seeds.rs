//! The fuzz bodies of `fuzz/` on their committed seed corpora (`fuzz/seeds/<target>/`)
//! and on inputs made from a fixed generator, so `cargo test` covers them without a
//! fuzzer. `fuzz_seeds_ordered.rs` runs them on the ordered map.

mod common;

use std::path::Path;

use common::Map;
use ptvp35_testkit::{crash_recovery_as, open_any_files_as, transactions_as, Rng};

fn seeds(target: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        out.push(std::fs::read(entry?.path())?);
    }
    anyhow::ensure!(!out.is_empty(), "no seeds in {}", dir.display());
    Ok(out)
}

fn generated(seed: u64, n: usize, max_len: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = rng.below(max_len);
            (0..len)
                .map(|_| u8::try_from(rng.below(256)).unwrap_or(0))
                .collect()
        })
        .collect()
}

#[test]
fn crash_recovery_seeds() -> anyhow::Result<()> {
    let inputs = seeds("crash_recovery")?;
    let n = inputs.len();
    for input in inputs.into_iter().chain(generated(1, 300, 96)) {
        crash_recovery_as::<Map>(&input);
    }
    println!("crash_recovery: {n} committed seeds and 300 generated inputs");
    Ok(())
}

#[test]
fn open_any_files_seeds() -> anyhow::Result<()> {
    for input in seeds("open_any_files")?
        .into_iter()
        .chain(generated(2, 500, 300))
    {
        open_any_files_as::<Map>(&input);
    }
    Ok(())
}

#[test]
fn transactions_seeds() -> anyhow::Result<()> {
    for input in seeds("transactions")?
        .into_iter()
        .chain(generated(3, 300, 200))
    {
        transactions_as::<Map>(&input);
    }
    Ok(())
}
