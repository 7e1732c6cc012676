//! ptvp35 against its peers and the physical limits (issue 5).
//!
//! `cargo run --release --manifest-path bench/Cargo.toml -- [--quick] [--reps N]
//! [--dir DIR] [--svg FILE] [--scale-svg FILE] [--scale-10m] [commits] [txn] [reads] [bulk]
//! [reopen] [rebuild] [encode] [scale] [ordered]`

mod child;
mod data;
mod encode;
mod engine;
mod ordered;
mod report;
mod scale;
mod stores;
mod workloads;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use workloads::Cfg;

const WORKLOADS: [&str; 9] = [
    "commits", "txn", "reads", "bulk", "reopen", "rebuild", "encode", "scale", "ordered",
];

const USAGE: &str =
    "usage: ptvp35-bench [--quick] [--reps N] [--dir DIR] [--svg FILE] [WORKLOAD...]
workloads: commits txn reads bulk reopen rebuild encode scale ordered (default: all)
  --quick      fewer keys and shorter runs (100k-key bulk database, 0.3 s runs;
               scale: 10k, 100k and 1M keys)
  --reps N     repetitions of every measurement (default 3, at least 3 for a median)
  --dir DIR    where the databases go (default: a fresh directory under /tmp)
  --svg FILE   where the commits plot goes (default docs/bench-commits.svg)
  --scale-svg FILE  where the scale plot goes (default docs/bench-scale.svg)
  --scale-10m  scale also to 10M keys (about 6 GiB of memory and 1.5 GB of disk)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if args.first().map(String::as_str) == Some("__child") {
        child::main(&args[1..])
    } else {
        bench(&args)
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn bench(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut reps = 3;
    let mut dir = None;
    let mut svg = PathBuf::from("docs/bench-commits.svg");
    let mut scale_svg = PathBuf::from("docs/bench-scale.svg");
    let mut scale_10m = false;
    let mut chosen: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--reps" => {
                reps = it
                    .next()
                    .context("--reps needs a number")?
                    .parse()
                    .context("--reps")?;
            }
            "--dir" => dir = Some(PathBuf::from(it.next().context("--dir needs a path")?)),
            "--svg" => svg = PathBuf::from(it.next().context("--svg needs a path")?),
            "--scale-svg" => {
                scale_svg = PathBuf::from(it.next().context("--scale-svg needs a path")?);
            }
            "--scale-10m" => scale_10m = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            w if WORKLOADS.contains(&w) => chosen.push(w.to_owned()),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if chosen.is_empty() {
        chosen = WORKLOADS.iter().map(|w| (*w).to_owned()).collect();
    }
    let own_dir = dir.is_none();
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ptvp35-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let cfg = Cfg {
        quick,
        reps: reps.max(1),
        dir: dir.clone(),
        svg,
        commit_secs: if quick { 0.3 } else { 1.0 },
        read_secs: if quick { 0.2 } else { 0.5 },
        bulk_keys: if quick { 100_000 } else { 1_000_000 },
        read_keys: 100_000,
        scale_keys: match (quick, scale_10m) {
            (true, _) => vec![10_000, 100_000, 1_000_000],
            (false, false) => vec![100_000, 1_000_000],
            (false, true) => vec![100_000, 1_000_000, 10_000_000],
        },
        scale_svg,
    };
    println!(
        "## ptvp35 benchmark\n\n`{}` · {} · {} cores · {} repetitions · databases in {}",
        std::iter::once("ptvp35-bench".to_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cfg.reps,
        dir.display()
    );
    let started = std::time::Instant::now();
    let mut result = Ok(());
    for w in &chosen {
        eprintln!("== {w}");
        let t = std::time::Instant::now();
        let r = match w.as_str() {
            "commits" => workloads::commits(&cfg),
            "txn" => workloads::txn(&cfg),
            "reads" => workloads::reads(&cfg),
            "bulk" => workloads::bulk(&cfg),
            "reopen" => workloads::reopen(&cfg),
            "encode" => encode::encode(&cfg),
            "scale" => scale::scale(&cfg),
            "ordered" => ordered::ordered(&cfg),
            _ => workloads::rebuild(&cfg),
        };
        eprintln!("== {w} took {:.0} s", t.elapsed().as_secs_f64());
        if let Err(e) = r {
            eprintln!("error in {w}: {e:#}");
            result = Err(e.context(format!("workload {w}")));
        }
    }
    println!("\nTotal time: {:.0} s", started.elapsed().as_secs_f64());
    if own_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
