//! Systematic crash exploration over the simulated filesystem (`ptvp35_testkit`): the
//! standard workload dies at every operation boundary in turn, each frozen state is
//! crashed into many disk states, every recovery is checked against the model, and
//! recovery itself is crashed at each of its boundaries. Set `PTVP35_EXPLORE_VERBOSE=1`
//! to see each crash point.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use ptvp35::{Options, Ordered};
use ptvp35_testkit::{
    explore, first_difference, run_steps_settled, standard_workload, workload_trace,
    workload_trace_as, Exploration, Explored, Kind, Model, SimFs,
};

/// The configuration of [`every_crash_point_recovers`].
fn without_preallocation() -> Options {
    Options::new()
        .compact_ratio(f64::INFINITY)
        .preallocate(false)
}

/// The configuration of [`every_crash_point_recovers_with_preallocation`].
fn with_preallocation() -> Options {
    Options::new().compact_ratio(f64::INFINITY)
}

/// The configuration of [`every_crash_point_recovers_with_automatic_rebuilds`]: each
/// rebuild copies the map one pair under a lock at a time.
fn with_automatic_rebuilds() -> Options {
    Options::new()
        .compact_ratio(1.5)
        .compact_floor(0)
        .preallocate(false)
        .rebuild_piece(1)
}

fn run(name: &str, opts: &Options, cfg: &Exploration) -> anyhow::Result<Explored> {
    run_as::<ptvp35::Hashed>(name, opts, cfg)
}

fn run_as<M: Kind>(name: &str, opts: &Options, cfg: &Exploration) -> anyhow::Result<Explored> {
    let t = Instant::now();
    let stats = explore::<M>(&standard_workload(), opts, cfg).map_err(anyhow::Error::msg)?;
    println!(
        "{name}: explored {} crash states ({} from crashes during recovery) at {} crash \
         points in {:.1?}; recoveries that restored the backup: {}, discarded a stale \
         backup: {}, cut bytes: {}",
        stats.states,
        stats.recovery_states,
        stats.crash_points,
        t.elapsed(),
        stats.restored,
        stats.discarded_backups,
        stats.cuts
    );
    Ok(stats)
}

/// Every step of the append, rebuild, session start and clean close protocols is a crash
/// point of the exploration (the last operation done before the crash).
fn covers_every_protocol_step(stats: &Explored, extra: &[&str]) -> anyhow::Result<()> {
    let done: BTreeSet<&str> = stats.gaps.iter().map(|g| g.0.as_str()).collect();
    let required = [
        "create P",               // open of a new database
        "create P.truncate",      // S1
        "write P.truncate",       // S1, R8
        "sync_data P.truncate",   // S1, R8
        "create P.truncate_flag", // S3
        "sync_dir",               // S2, S4, R4, R6, R7, R9, C2, C4
        "write P",                // A2
        "sync_data P",            // A3
        "create P.backup",        // R1
        "set_len P.backup",       // R1
        "write P.backup",         // R2
        "sync_data P.backup",     // R3
        "create P.recover",       // R5
        "rename P.backup P",      // R7
        "remove P.recover",       // R9
        "remove P.truncate_flag", // C1
        "remove P.truncate",      // C3
    ];
    for step in required.iter().chain(extra) {
        ensure!(
            done.contains(step),
            "no crash point after {step:?}: {done:?}"
        );
    }
    // Every pair of consecutive operations of a full run is a gap crashed into.
    let pairs: BTreeSet<(String, String)> = stats
        .full_trace
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect();
    let missed: Vec<_> = pairs.iter().filter(|p| !stats.gaps.contains(p)).collect();
    ensure!(missed.is_empty(), "gaps never crashed into: {missed:?}");
    Ok(())
}

#[test]
fn every_crash_point_recovers() -> anyhow::Result<()> {
    let stats = run(
        "without preallocation",
        &without_preallocation(),
        &Exploration::default(),
    )?;
    covers_every_protocol_step(&stats, &[])?;
    ensure!(stats.states >= 10_000, "only {} crash states", stats.states);
    ensure!(stats.restored > 0 && stats.discarded_backups > 0 && stats.cuts > 0);
    Ok(())
}

/// The same with preallocated zeros after the data (the default), which a clean close
/// trims (C0); fewer random states per point, as every state carries 256 KiB of zeros.
#[test]
fn every_crash_point_recovers_with_preallocation() -> anyhow::Result<()> {
    let cfg = Exploration {
        random_per_point: 6,
        torn_every_byte: false,
        recovery_samples: 2,
        recovery_stride: 0,
        recovery_variants: 1,
        seed: 2,
    };
    let stats = run("with preallocation", &with_preallocation(), &cfg)?;
    covers_every_protocol_step(&stats, &["set_len P"])?;
    Ok(())
}

/// Automatic rebuilds (started by the writer after a batch) instead of explicit ones.
#[test]
fn every_crash_point_recovers_with_automatic_rebuilds() -> anyhow::Result<()> {
    let cfg = Exploration {
        random_per_point: 8,
        recovery_samples: 1,
        recovery_stride: 0,
        recovery_variants: 1,
        seed: 3,
        ..Exploration::default()
    };
    let stats = run("with automatic rebuilds", &with_automatic_rebuilds(), &cfg)?;
    ensure!(
        stats
            .full_trace
            .iter()
            .filter(|op| *op == "create P.backup")
            .count()
            > 3,
        "the writer started no automatic rebuild: {:?}",
        stats.full_trace
    );
    Ok(())
}

/// The same exploration with the ordered map, whose rebuild copies a frozen state of the
/// map in key order without locks.
#[test]
fn every_crash_point_recovers_with_the_ordered_map() -> anyhow::Result<()> {
    // The copy is one write (the map frozen, in key order): fewer crash points than the
    // hash map's shard-by-shard copy, so more states at each.
    let cfg = Exploration {
        random_per_point: 48,
        seed: 4,
        ..Exploration::default()
    };
    let stats = run_as::<Ordered>("ordered map", &without_preallocation(), &cfg)?;
    covers_every_protocol_step(&stats, &[])?;
    ensure!(stats.restored > 0 && stats.discarded_backups > 0 && stats.cuts > 0);
    Ok(())
}

/// The ordered map with automatic rebuilds and preallocation.
#[test]
fn every_crash_point_recovers_with_the_ordered_map_and_automatic_rebuilds() -> anyhow::Result<()> {
    let cfg = Exploration {
        random_per_point: 4,
        torn_every_byte: false,
        recovery_samples: 1,
        recovery_stride: 0,
        recovery_variants: 1,
        seed: 5,
    };
    let opts = Options::new().compact_ratio(1.5).compact_floor(0);
    let stats = run_as::<Ordered>("ordered map, automatic rebuilds", &opts, &cfg)?;
    ensure!(
        stats
            .full_trace
            .iter()
            .filter(|op| *op == "create P.backup")
            .count()
            > 3,
        "the writer started no automatic rebuild"
    );
    Ok(())
}

/// Runs `f` while another thread spins, keeping a core busy.
fn with_a_busy_core<T>(f: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    })
}

/// The exploration's coverage claims rest on this: the operations a run of the workload
/// makes, in order, do not depend on thread scheduling. Each configuration runs twice,
/// the second time with another core kept busy, and the traces must be equal.
#[test]
fn the_workload_makes_the_same_operations_under_load() -> anyhow::Result<()> {
    let steps = standard_workload();
    for (name, opts) in [
        ("without preallocation", without_preallocation()),
        ("with preallocation", with_preallocation()),
        ("with automatic rebuilds", with_automatic_rebuilds()),
    ] {
        let quiet = workload_trace(&steps, &opts).map_err(anyhow::Error::msg)?;
        let busy =
            with_a_busy_core(|| workload_trace(&steps, &opts)).map_err(anyhow::Error::msg)?;
        if let Some(d) = first_difference(&quiet, &busy) {
            bail!("{name}: the traces of two runs differ at {d}");
        }
    }
    let opts = with_automatic_rebuilds();
    let quiet = workload_trace_as::<Ordered>(&steps, &opts).map_err(anyhow::Error::msg)?;
    let busy = with_a_busy_core(|| workload_trace_as::<Ordered>(&steps, &opts))
        .map_err(anyhow::Error::msg)?;
    if let Some(d) = first_difference(&quiet, &busy) {
        bail!("ordered map: the traces of two runs differ at {d}");
    }
    Ok(())
}

/// The settled workload still writes a batch of several transactions, at a point that
/// does not depend on scheduling: the two steps queued during each rebuild's last steps.
#[test]
fn the_settled_workload_writes_a_batch_of_two_transactions() -> anyhow::Result<()> {
    let fs = SimFs::new();
    let out = run_steps_settled(
        &fs,
        &without_preallocation(),
        &standard_workload(),
        &mut Model::default(),
    );
    if let Some((i, e)) = out.error {
        bail!("step {i}: {e}");
    }
    let db = out.db.context("the workload ends open")?;
    // Counted since the last session's open: one batch per request but one.
    let s = db.stats();
    ensure!(s.requests == s.batches + 1, "{s:?}");
    db.close()?;
    Ok(())
}
