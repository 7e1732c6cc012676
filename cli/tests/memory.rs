//! The tool's memory on a large file: `get` holds one record, `dump` the live keys, never
//! the file. Measured as the child's peak resident set size, which the tool prints at exit
//! under `PTVP35_REPORT_PEAK_RSS=1` (Linux only: the test exists there only).
#![cfg(target_os = "linux")]

mod common;

use common::Dir;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

const KEYS: usize = 500;
const ROUNDS: usize = 9;
const VALUE: usize = 32 * 1024;

fn value(round: usize, key: usize) -> String {
    let mut v = format!("{round}:{key}:");
    v.push_str(&"abcdefgh".repeat(VALUE / 8));
    v
}

/// A database of `KEYS * ROUNDS` records of 32 KiB (about 150 MB), written as a closed
/// database's file: every key set in each round, every 50th key removed at the end.
fn large_db(path: &Path) -> Result<u64> {
    let mut text = String::with_capacity(KEYS * ROUNDS * (VALUE + 64));
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            writeln!(
                text,
                "{{\"key\":\"k{key:03}\",\"value\":\"{}\"}}",
                value(round, key)
            )?;
        }
    }
    for key in (0..KEYS).step_by(50) {
        writeln!(text, "{{\"key\":\"k{key:03}\"}}")?;
    }
    std::fs::write(path, &text)?;
    Ok(text.len() as u64)
}

/// Runs the tool; returns its standard output and its peak RSS in bytes.
fn measured(args: &[&str]) -> Result<(Vec<u8>, u64)> {
    let out = Command::new(env!("CARGO_BIN_EXE_ptvp35"))
        .args(args)
        .env("PTVP35_REPORT_PEAK_RSS", "1")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{args:?}: {}\n{err}", out.status);
    let Some(kb) = err
        .lines()
        .find_map(|l| l.strip_prefix("ptvp35: peak RSS "))
        .and_then(|l| l.strip_suffix(" kB"))
    else {
        bail!("{args:?} printed no peak RSS: {err}");
    };
    Ok((out.stdout, kb.trim().parse::<u64>().context("kB")? * 1024))
}

#[test]
fn get_and_dump_stream_a_large_file_in_bounded_memory() -> Result<()> {
    let d = Dir::new("large")?;
    let path = d.0.join("big.db");
    let size = large_db(&path)?;
    let f = path.to_str().context("utf-8 path")?;
    let limit = 40 << 20;
    ensure!(
        size > 3 * limit,
        "the file ({size} bytes) must dwarf the limit"
    );

    let (got, get_rss) = measured(&["get", f, "k123"])?;
    let (out, dump_rss) = measured(&["dump", f])?;
    eprintln!("file {size} bytes; peak RSS: get {get_rss}, dump {dump_rss}");
    ensure!(got == format!("\"{}\"\n", value(ROUNDS - 1, 123)).into_bytes());
    let mut want = String::new();
    for key in (0..KEYS).filter(|k| k % 50 != 0) {
        writeln!(
            want,
            "{{\"key\":\"k{key:03}\",\"value\":\"{}\"}}",
            value(ROUNDS - 1, key)
        )?;
    }
    ensure!(
        out == want.into_bytes(),
        "dump differs (or is not in key order)"
    );
    ensure!(
        get_rss < limit,
        "get held {get_rss} bytes at its peak for a {size}-byte file"
    );
    ensure!(
        dump_rss < limit,
        "dump held {dump_rss} bytes at its peak for a {size}-byte file"
    );
    Ok(())
}
