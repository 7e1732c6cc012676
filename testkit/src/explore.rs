//! Systematic crash exploration: run a workload that dies at every operation boundary in
//! turn, crash each frozen state into many disk states (all lost, all kept, torn at every
//! byte, zero or garbage tails, non-prefix blocks, random mixes), judge every recovery
//! against the model, and crash recovery itself at each of its own boundaries.

use std::collections::{BTreeSet, HashMap, HashSet};

use xxhash_rust::xxh3::Xxh3;

use super::disk::{Fate, OpKind, PendingOp, Rng};
use super::model::{
    db_path, open_on_as, run_steps_settled_as, six_paths, verify_as, Kind, Model, Step,
    WORKLOAD_OWNER,
};
use super::sim::SimFs;
use ptvp35::{Hashed, Options};

/// How much to explore at each crash point.
#[derive(Debug, Clone)]
pub struct Exploration {
    /// Random disk states per crash point (beyond the fixed ones).
    pub random_per_point: u32,
    /// For each unsynced write to `P`, a state torn at every byte offset of it.
    pub torn_every_byte: bool,
    /// Crash states per crash point whose recovery is itself crashed at each of its
    /// operation boundaries (0: none).
    pub recovery_samples: u32,
    /// ...and every this many after them (0: none).
    pub recovery_stride: u32,
    /// Disk states taken at each boundary of such a recovery.
    pub recovery_variants: u32,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for Exploration {
    fn default() -> Self {
        Exploration {
            random_per_point: 24,
            torn_every_byte: true,
            recovery_samples: 3,
            recovery_stride: 16,
            recovery_variants: 2,
            seed: 1,
        }
    }
}

/// What an exploration covered.
#[derive(Debug, Default, Clone)]
pub struct Explored {
    /// Operation boundaries the workload was crashed at.
    pub crash_points: u64,
    /// Crash states checked (distinct within their crash point), recovery crashes
    /// included.
    pub states: u64,
    /// Of those, states left by a crash during recovery.
    pub recovery_states: u64,
    /// For each crash point: the last operation done and the one that did not happen
    /// (`"end"` after the last), as [`TraceOp::label`](super::TraceOp::label)s.
    pub gaps: BTreeSet<(String, String)>,
    /// The trace labels of a full run, in order.
    pub full_trace: Vec<String>,
    /// Recoveries (of a first crash) that restored `P` from `P.backup` (V1-V2).
    pub restored: u64,
    /// Recoveries that deleted a backup nothing vouched for (V3).
    pub discarded_backups: u64,
    /// Recoveries that cut bytes from `P` (V4).
    pub cuts: u64,
}

fn fingerprint(fs: &SimFs) -> u64 {
    let mut h = Xxh3::new();
    for (path, data) in fs.files() {
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    h.digest()
}

/// The fixed and random disk states of a crash now, each with a name.
fn variants(fs: &SimFs, cfg: &Exploration, rng: &mut Rng) -> Vec<(String, SimFs)> {
    let pending = fs.pending();
    let mut out = vec![
        ("durable".to_string(), fs.crash_durable()),
        ("all kept".to_string(), fs.crash_with(|_, _| Fate::Keep)),
    ];
    for (i, op) in pending.iter().enumerate() {
        let only =
            |fate: Fate| move |j: usize, _: &PendingOp| if j == i { fate } else { Fate::Keep };
        if op.kind == OpKind::Rename {
            // A rename cut as ALICE's pessimistic model cuts it: target unlinked, both
            // names unlinked, both names on one file.
            for k in 1..=3 {
                let fate = Fate::Prefix(k);
                out.push((
                    format!("pending #{i} rename cut {k}"),
                    fs.crash_with(only(fate)),
                ));
            }
        }
        if op.kind != OpKind::Write {
            continue;
        }
        if op.zeros {
            // Preallocated zeros: only whether they (or garbage) reached the disk matters.
            for fate in [
                Fate::Lose,
                Fate::SizeOnly {
                    garbage: true,
                    seed: rng.next_u64(),
                },
            ] {
                out.push((format!("pending #{i} {fate:?}"), fs.crash_with(only(fate))));
            }
            continue;
        }
        let mut fates = vec![
            Fate::Lose,
            Fate::SizeOnly {
                garbage: false,
                seed: 0,
            },
            Fate::SizeOnly {
                garbage: true,
                seed: rng.next_u64(),
            },
        ];
        for size in [1, 8, 64] {
            fates.push(Fate::Blocks {
                size,
                seed: rng.next_u64(),
            });
        }
        if cfg.torn_every_byte {
            let len = usize::try_from(op.len).unwrap_or(0).min(1 << 12);
            fates.extend((1..len).map(Fate::Prefix));
        } else {
            fates.push(Fate::Prefix(usize::try_from(op.len / 2).unwrap_or(0)));
        }
        for fate in fates {
            out.push((format!("pending #{i} {fate:?}"), fs.crash_with(only(fate))));
        }
    }
    for _ in 0..cfg.random_per_point {
        let seed = rng.next_u64();
        out.push((format!("seeded {seed}"), fs.crash_seeded(seed)));
    }
    out
}

/// The trace labels of a run of `steps` that nothing interrupts, each step run to
/// quiescence ([`run_steps_settled`](crate::run_steps_settled)): the same on every run, whatever the load.
///
/// # Errors
///
/// The step that failed, if one did.
pub fn workload_trace(steps: &[Step], opts: &Options) -> Result<Vec<String>, String> {
    workload_trace_as::<Hashed>(steps, opts)
}

/// [`workload_trace`] with the map `M`.
///
/// # Errors
///
/// As [`workload_trace`].
pub fn workload_trace_as<M: Kind>(steps: &[Step], opts: &Options) -> Result<Vec<String>, String> {
    let fs = SimFs::new();
    let out = run_steps_settled_as::<M>(&fs, opts, steps, &mut Model::default());
    if let Some((i, e)) = out.error {
        return Err(format!(
            "the workload fails without a crash at step {i}: {e}"
        ));
    }
    drop(out.db);
    if fs.owner(&db_path()) != Some(WORKLOAD_OWNER) {
        return Err(format!(
            "the workload's rebuilds changed the main file's owner or mode: {:?}",
            fs.owner(&db_path())
        ));
    }
    Ok(fs.trace().iter().map(super::TraceOp::label).collect())
}

/// Where two traces part: `None` if `a` and `b` are equal, else the first index at which
/// they differ (or one ends), with a few labels of each from there.
#[must_use]
pub fn first_difference(a: &[String], b: &[String]) -> Option<String> {
    let i = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if i == a.len() && i == b.len() {
        return None;
    }
    let from = |t: &[String]| {
        let end = t.len().min(i + 4);
        if i >= t.len() {
            "(ended)".to_string()
        } else {
            format!("{:?}", &t[i..end])
        }
    };
    Some(format!(
        "op {i} (after {:?}): {} vs {}",
        i.checked_sub(1).and_then(|j| a.get(j)),
        from(a),
        from(b)
    ))
}

/// Crashes every run of `steps` on the map `M` at each operation boundary in turn and
/// checks every resulting disk state (see [`Exploration`]). Each run takes its steps to quiescence
/// ([`run_steps_settled`](crate::run_steps_settled)), so that run `n` makes the first `n` operations of the full
/// run, the same ones, whatever the machine's load.
///
/// # Errors
///
/// The first violation, with the crash point and the disk state that shows it; or a
/// crashed run whose operations up to its crash differ from the full run's (the
/// exploration would not reach the crash points it claims).
pub fn explore<M: Kind>(
    steps: &[Step],
    opts: &Options,
    cfg: &Exploration,
) -> Result<Explored, String> {
    let mut stats = Explored::default();
    let mut rng = Rng::new(cfg.seed);
    stats.full_trace = workload_trace_as::<M>(steps, opts)?;
    let mut gap_counts: HashMap<(String, String), u32> = HashMap::new();
    let mut n = 0;
    loop {
        let fs = SimFs::new();
        fs.set_seed(rng.next_u64());
        fs.crash_after(n);
        let mut model = Model::default();
        let out = run_steps_settled_as::<M>(&fs, opts, steps, &mut model);
        drop(out.db);
        let done = !fs.is_down();
        let trace = fs.trace();
        // Up to its crash (the first failed operation included), the run must have done
        // what the full run did, or the crash points are not the ones claimed.
        let upto = trace
            .iter()
            .position(|t| t.failed)
            .map_or(trace.len(), |i| i + 1);
        let prefix: Vec<String> = trace[..upto].iter().map(super::TraceOp::label).collect();
        let full_prefix = &stats.full_trace[..upto.min(stats.full_trace.len())];
        if let Some(d) = first_difference(&prefix, full_prefix) {
            return Err(format!(
                "the run crashed after op {n} diverged from the full run before its crash, \
                 at {d}: the workload's schedule is not reproducible"
            ));
        }
        let last = trace.iter().rev().find(|t| !t.failed);
        let next = trace.iter().find(|t| t.failed);
        let gap = (
            last.map_or_else(|| "start".into(), super::TraceOp::label),
            next.map_or_else(|| "end".into(), super::TraceOp::label),
        );
        if std::env::var_os("PTVP35_EXPLORE_VERBOSE").is_some() {
            eprintln!("crash point {n}: {} | {}", gap.0, gap.1);
        }
        stats.gaps.insert(gap.clone());
        stats.crash_points += 1;
        // A rebuild copies the map in many small writes: the same gap comes back often.
        // Its first occurrences and every 16th get every variant, the others a sample.
        let seen_gap = gap_counts.entry(gap.clone()).or_insert(0u32);
        *seen_gap += 1;
        let full = *seen_gap <= 4 || (*seen_gap).is_multiple_of(16);
        let mut seen = HashSet::new();
        let to_check = if full {
            variants(&fs, cfg, &mut rng)
        } else {
            let random = rng.next_u64();
            vec![
                ("durable".to_string(), fs.crash_durable()),
                (format!("seeded {random}"), fs.crash_seeded(random)),
            ]
        };
        for (name, state) in to_check {
            if !seen.insert(fingerprint(&state)) {
                continue;
            }
            let index = u32::try_from(seen.len() - 1).unwrap_or(u32::MAX);
            stats.states += 1;
            let at = || format!("crash after op {n} ({} | {}), {name}", gap.0, gap.1);
            let v = verify_as::<M>(&state, &model, opts).map_err(|e| format!("{}: {e}", at()))?;
            stats.restored += u64::from(v.report.restored_from_backup);
            stats.discarded_backups += u64::from(v.report.discarded_stale_backup);
            stats.cuts += u64::from(v.report.cut.is_some());
            let stride = cfg.recovery_stride;
            if full && (index < cfg.recovery_samples || (stride > 0 && index % stride == 0)) {
                let k = crash_recovery::<M>(&state, &model, opts, cfg, &mut rng)
                    .map_err(|e| format!("{}, then a crash in recovery: {e}", at()))?;
                stats.states += k;
                stats.recovery_states += k;
            }
        }
        if done {
            break;
        }
        n += 1;
    }
    Ok(stats)
}

/// Crashes the recovery of `state` at each of its operation boundaries, and checks the
/// next recovery of each resulting disk state. Returns how many states it checked.
///
/// # Errors
///
/// The first violation.
fn crash_recovery<M: Kind>(
    state: &SimFs,
    model: &Model,
    opts: &Options,
    cfg: &Exploration,
    rng: &mut Rng,
) -> Result<u64, String> {
    let perr = six_paths(&db_path())[5].clone();
    let probe = state.fork();
    let before = probe.ops();
    let recovery_ops = match open_on_as::<M>(&probe, opts) {
        Ok(db) => {
            let n = probe.ops() - before;
            drop(db);
            n
        }
        Err(e) => return Err(format!("recovery failed: {e}")),
    };
    // What the recovery cuts must end up in `P.error` whatever crash interrupts it.
    let old_err = state.file(&perr).unwrap_or_default();
    let cut = probe.file(&perr).unwrap_or_default()[old_err.len()..].to_vec();
    let mut checked = 0;
    let mut seen = HashSet::new();
    for m in 0..recovery_ops {
        let fs = state.fork();
        fs.crash_after(m);
        drop(open_on_as::<M>(&fs, opts));
        let mut states = vec![fs.crash_durable(), fs.crash_with(|_, _| Fate::Keep)];
        for _ in 0..cfg.recovery_variants {
            states.push(fs.crash_seeded(rng.next_u64()));
        }
        for s in states {
            if seen.insert(fingerprint(&s)) {
                checked += 1;
                let v =
                    verify_as::<M>(&s, model, opts).map_err(|e| format!("recovery op {m}: {e}"))?;
                let err = v.error_file;
                if !cut.is_empty() && !err.windows(cut.len()).any(|w| w == cut.as_slice()) {
                    return Err(format!(
                        "recovery op {m}: the {} bytes recovery cuts are not in P.error \
                         after a crash there and a second recovery",
                        cut.len()
                    ));
                }
            }
        }
    }
    Ok(checked)
}

/// The workload of the systematic exploration: three sessions (a clean close and reopen
/// between them, a clean close at the end) of single-key writes and removals, waited and
/// not, multi-key transactions (deltas, a large one among them, nested guards dropped,
/// rolled back and panicking, `transact`), and a rebuild in the middle of each session,
/// followed by a step that [`run_steps_settled`](crate::run_steps_settled) runs during its copy and two that do not
/// wait, which it queues during the rebuild's last steps (one batch of two transactions).
#[must_use]
pub fn standard_workload() -> Vec<Step> {
    let mut steps = Vec::new();
    for round in 0..3u8 {
        if round > 0 {
            steps.push(Step::Reopen);
        }
        steps.extend(session(round * 20));
    }
    steps
}

fn session(o: u8) -> Vec<Step> {
    use Step::{
        Commit, Compact, Delta, Nested, Remove, RemoveNowait, Set, SetNowait, SubmitDelta, Transact,
    };
    vec![
        Set(o),
        Set(o + 1),
        SetNowait(o + 2),
        RemoveNowait(o),
        Commit,
        Delta(vec![(o + 3, true), (o + 4, true), (o + 1, false)]),
        Nested {
            outer: vec![(o + 5, true)],
            inner: vec![(o + 6, true), (o + 5, false)],
            inner_end: 0,
            commit: true,
        },
        Nested {
            outer: vec![(o + 7, true)],
            inner: vec![(o + 8, true)],
            inner_end: 1,
            commit: false,
        },
        Nested {
            outer: vec![(o + 9, true)],
            inner: vec![(o + 10, true)],
            inner_end: 2,
            commit: true,
        },
        Transact(o + 3, o + 11),
        Compact,
        // Settled, this runs during the rebuild's copy...
        Set(o + 12),
        // ...and these two are queued during its last steps: one batch after it.
        SubmitDelta(vec![(o + 13, true), (o + 2, false)]),
        SetNowait(o + 16),
        Delta(vec![(o, true), (o + 12, false)]),
        Remove(o + 4),
        Delta((0..12).map(|k| (o + k, k % 3 != 0)).collect()),
        Set(o + 14),
        Delta(vec![(o + 14, false), (o + 15, true)]),
        Set(o + 1),
    ]
}
