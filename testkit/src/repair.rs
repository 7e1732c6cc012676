//! `repair` on the simulated filesystem, crashed at each of its operation boundaries:
//! the explicit act that moves undecodable lines to `P.error` must keep every good record
//! and every bad line whatever crash interrupts it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::disk::Fate;
use super::model::{db_path, open_on_as, six_paths, state_of, Kind, State};
use super::sim::SimFs;
use ptvp35::Options;

/// A database whose valid region holds good records of `String` to `u64` with
/// undecodable lines among them, as durable files on a fresh simulated filesystem. With
/// `crashed`, a session's flag and count are left too, with a torn line after the count,
/// so that the repair's own recovery has work to do. Returns the files and the state the
/// good records give.
#[must_use]
pub fn corrupt_database(crashed: bool) -> (SimFs, State, Vec<Vec<u8>>) {
    let [p, _, _, truncate, flag, _] = six_paths(&db_path());
    let mut data = Vec::new();
    let mut want = State::new();
    let mut bad = Vec::new();
    for i in 0..12u64 {
        if i % 5 == 2 {
            let line = format!("{{\"key\":\"k{i}\",\"value\":\"not a number\"}}");
            bad.push(line.clone().into_bytes());
            data.extend_from_slice(line.as_bytes());
        } else {
            data.extend_from_slice(format!("{{\"key\":\"k{i}\",\"value\":{i}}}").as_bytes());
            want.insert(format!("k{i}"), i);
        }
        data.push(b'\n');
    }
    let mut files = BTreeMap::new();
    if crashed {
        let count = u128::from(data.len() as u64).to_le_bytes().to_vec();
        files.insert(truncate, count);
        files.insert(flag, Vec::new());
        data.extend_from_slice(b"{\"key\":\"torn");
    }
    files.insert(p, data);
    (SimFs::with_files(&files), want, bad)
}

/// Crashes `repair` of `state` at each of its operation boundaries, in several disk
/// states each; every one must then repair (again, if need be) and open with the map `M`
/// to `want`, with every line of `bad` in `P.error`. Returns how many states it checked.
///
/// # Errors
///
/// The first violation.
pub fn explore_repair<M: Kind>(
    state: &SimFs,
    want: &State,
    bad: &[Vec<u8>],
) -> Result<u64, String> {
    let perr = six_paths(&db_path())[5].clone();
    let repair = |fs: &SimFs| {
        ptvp35::repair_on::<String, u64>(&(Arc::new(fs.clone()) as Arc<dyn ptvp35::Fs>), &db_path())
            .map(drop)
    };
    let probe = state.fork();
    let before = probe.ops();
    repair(&probe).map_err(|e| format!("repair without a crash failed: {e}"))?;
    let ops = probe.ops() - before;
    let mut checked = 0;
    for m in 0..=ops {
        let fs = state.fork();
        fs.crash_after(m);
        let _ = repair(&fs);
        for (name, after) in [
            ("durable", fs.crash_durable()),
            ("all kept", fs.crash_with(|_, _| Fate::Keep)),
            ("seeded", fs.crash_seeded(m)),
        ] {
            checked += 1;
            let at = || format!("repair crashed after its op {m}, {name}");
            // The user repairs again (a repair that finds nothing to move only recovers).
            repair(&after).map_err(|e| format!("{}: the next repair failed: {e}", at()))?;
            let db = open_on_as::<M>(&after, &Options::new())
                .map_err(|e| format!("{}: the open after it failed: {e}", at()))?;
            if state_of(&db) != *want {
                return Err(format!("{}: state {:?}", at(), state_of(&db)));
            }
            db.close().map_err(|e| format!("{}: close: {e}", at()))?;
            let err = after.file(&perr).unwrap_or_default();
            for line in bad {
                if !err.windows(line.len()).any(|w| w == line.as_slice()) {
                    return Err(format!(
                        "{}: a moved line is not in P.error: {}",
                        at(),
                        String::from_utf8_lossy(line)
                    ));
                }
            }
        }
    }
    Ok(checked)
}
