//! Workload 8 (issue 11): cost per key against keys. Bulk load (`extend`), reopen and
//! rebuild of ptvp35 databases of growing size, each step in a process of its own.

use anyhow::{Context, Result};

use crate::data::Summary;
use crate::report::{num, secs, svg_axes, Series, Table};
use crate::workloads::{child, Cfg, ChildOut};

/// The steps measured at each size, in the order they run.
const STEPS: [&str; 3] = ["bulk load (extend)", "reopen", "rebuild"];

fn run_step(step: usize, dir: &str, n: u64) -> Result<ChildOut> {
    let args: Vec<String> = match step {
        0 => {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
            vec![
                "bulk".into(),
                "ptvp35-extend".into(),
                dir.into(),
                n.to_string(),
            ]
        }
        1 => vec![
            "reopen".into(),
            "ptvp35".into(),
            dir.into(),
            "typed".into(),
            "0".into(),
        ],
        _ => vec!["rebuild".into(), dir.into()],
    };
    child(&args)
}

pub fn scale(cfg: &Cfg) -> Result<()> {
    let keys = &cfg.scale_keys;
    // results[step][size] = the repetitions
    let mut results: Vec<Vec<Vec<ChildOut>>> = vec![vec![Vec::new(); keys.len()]; STEPS.len()];
    for (ki, &n) in keys.iter().enumerate() {
        let dir = cfg.dir.join("scale").join(n.to_string());
        let dir = dir.display().to_string();
        for rep in 0..cfg.reps {
            for (si, name) in STEPS.iter().enumerate() {
                let o = run_step(si, &dir, n).with_context(|| format!("scale {name} {n}"))?;
                let kib = o.hwm_kib.max(o.rss_kib);
                eprintln!(
                    "  scale {n:>9} {name:<20} rep {rep}: {} {:.0} B/key",
                    secs(o.secs),
                    kib as f64 * 1024.0 / n as f64
                );
                results[si][ki].push(o);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mut tab = Table::new(
        "8. Scale: cost per key against keys (ptvp35, typed values)",
        &[
            "step",
            "keys",
            "time, median (min–max)",
            "ns per key",
            "memory",
            "bytes per key",
        ],
    );
    let mut series = Vec::new();
    let mut memory = Vec::new();
    for (si, name) in STEPS.iter().enumerate() {
        let mut points = Vec::new();
        let mut bytes = Vec::new();
        for (ki, &n) in keys.iter().enumerate() {
            let runs = &results[si][ki];
            let t = Summary::of(&runs.iter().map(|o| o.secs).collect::<Vec<_>>());
            let kib = Summary::of(
                &runs
                    .iter()
                    .map(|o| o.hwm_kib.max(o.rss_kib) as f64)
                    .collect::<Vec<_>>(),
            );
            let per_key_ns = t.med * 1e9 / n as f64;
            let x = usize::try_from(n).unwrap_or(usize::MAX);
            points.push((x, per_key_ns));
            bytes.push((x, kib.med * 1024.0 / n as f64));
            tab.row(vec![
                (*name).to_owned(),
                num(n as f64),
                crate::report::sum(t, secs),
                format!("{per_key_ns:.0}"),
                crate::report::mib(kib.med * 1024.0),
                format!("{:.0}", kib.med * 1024.0 / n as f64),
            ]);
        }
        series.push(Series {
            label: format!("{name}, ns"),
            points,
            flat: false,
        });
        memory.push(Series {
            label: format!("{name}, bytes"),
            points: bytes,
            flat: false,
        });
    }
    series.extend(memory);
    tab.notes.push(format!(
        "Each step in its own process, {} repetitions per size; the bulk load writes a fresh database with \
         `DbConnection::extend`, the reopen opens it (default parse threads) and reads one key, the rebuild opens it and \
         runs `compact()`. Memory: the bulk load's and the rebuild's peak RSS (VmHWM, the rebuild's includes its open), \
         the reopen's VmRSS once open.",
        cfg.reps
    ));
    tab.print();
    let mut idle = Table::new(
        "8b. Rebuild with nothing else running: the longest lock and the install's stall",
        &[
            "keys",
            "longest lock held, median (min–max)",
            "writer stalled at install, median (min–max)",
        ],
    );
    for (ki, &n) in keys.iter().enumerate() {
        let runs = &results[STEPS.len() - 1][ki];
        let of = |f: fn(&ChildOut) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
        idle.row(vec![
            num(n as f64),
            crate::report::sum(of(|o| o.lock_secs), secs),
            crate::report::sum(of(|o| o.install_secs), secs),
        ]);
    }
    idle.notes.push(
        "The rebuild steps above (`Stats::rebuild_longest_lock` and `Stats::rebuild_install` after `compact()`): \
         no reader or writer runs beside the rebuild, so no lock is held longer for want of a core."
            .into(),
    );
    idle.print();
    let xs: Vec<usize> = keys
        .iter()
        .map(|&n| usize::try_from(n).unwrap_or(usize::MAX))
        .collect();
    let svg = svg_axes(
        "ptvp35: time and memory per key against keys",
        &xs,
        ("keys (log)", "ns per key, bytes per key (log)"),
        &series,
    );
    if let Some(d) = cfg.scale_svg.parent() {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir_all(d)?;
        }
    }
    std::fs::write(&cfg.scale_svg, svg)
        .with_context(|| format!("write {}", cfg.scale_svg.display()))?;
    eprintln!("plot written to {}", cfg.scale_svg.display());
    Ok(())
}
