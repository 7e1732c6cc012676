//! The fuzz bodies: each turns arbitrary bytes into a scenario, runs it on a [`SimFs`] and
//! panics if a rule is broken. `fuzz/` calls them from libFuzzer; `cargo test` calls them
//! on a fixed seed set (`testkit/tests/fuzz_seeds.rs`).

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;

use super::model::{
    db_path, key, open_on_as, open_typed, quiet_intended_panics, run_steps_as, six_paths, state_of,
    strays, verify_as, Db, IntendedPanic, Kind, Model, Step,
};
use super::sim::SimFs;
use ptvp35::{DbConnection, Hashed, Options, TransactionView};

/// Reads numbers from the fuzzer's bytes; zeros once they run out.
#[derive(Debug)]
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    fn more(&self) -> bool {
        self.pos < self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    fn keys(&mut self) -> Vec<(u8, bool)> {
        let n = self.u8() % 5;
        (0..n)
            .map(|_| (self.u8() % 24, !self.u8().is_multiple_of(4)))
            .collect()
    }
}

fn step(inp: &mut Input<'_>) -> Step {
    match inp.u8() % 12 {
        0 => Step::Set(inp.u8() % 24),
        1 => Step::SetNowait(inp.u8() % 24),
        2 => Step::Remove(inp.u8() % 24),
        3 => Step::RemoveNowait(inp.u8() % 24),
        4 => Step::Commit,
        5 => Step::Delta(inp.keys()),
        6 => Step::SubmitDelta(inp.keys()),
        7 | 8 => Step::Nested {
            outer: inp.keys(),
            inner: inp.keys(),
            inner_end: inp.u8() % 3,
            commit: inp.u8().is_multiple_of(2),
        },
        9 => Step::Transact(inp.u8() % 24, inp.u8() % 24),
        10 => Step::Compact,
        _ => Step::Reopen,
    }
}

/// `crash_recovery`: bytes → options, a workload, a crash point, a disk state at the crash
/// (torn, reordered, zero or garbage tails, lost directory entries, as the seed decides),
/// then a second crash inside the recovery; both recoveries are checked against the model
/// ([`verify`](crate::verify)).
///
/// # Panics
///
/// If a recovery breaks a rule: that is the finding.
pub fn crash_recovery(data: &[u8]) {
    crash_recovery_as::<Hashed>(data);
}

/// [`crash_recovery`] with the map `M`.
///
/// # Panics
///
/// As [`crash_recovery`].
pub fn crash_recovery_as<M: Kind>(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let crash_at = u64::from(inp.u16() % 512);
    let seed = inp.u64();
    let second = inp.u8();
    let opts = Options::new()
        .preallocate(flags & 1 != 0)
        .compact_ratio(if flags & 2 != 0 { 1.5 } else { f64::INFINITY })
        .compact_floor(0)
        .batch_bytes(if flags & 4 != 0 { 64 } else { 8 << 20 });
    let mut steps = Vec::new();
    while inp.more() && steps.len() < 48 {
        steps.push(step(&mut inp));
    }
    let fs = SimFs::new();
    fs.set_seed(seed);
    fs.crash_after(crash_at);
    let mut model = Model::default();
    let out = run_steps_as::<M>(&fs, &opts, &steps, &mut model);
    drop(out.db);
    let state = fs.crash_seeded(seed);
    if let Err(e) = verify_as::<M>(&state, &model, &opts) {
        panic!("crash after op {crash_at}, seed {seed}, steps {steps:?}: {e}");
    }
    // A second crash, inside the recovery of that state.
    let during = state.fork();
    during.crash_after(u64::from(second % 24));
    drop(open_on_as::<M>(&during, &opts));
    let again = during.crash_seeded(seed.rotate_left(17));
    if let Err(e) = verify_as::<M>(&again, &model, &opts) {
        panic!(
            "crash after op {crash_at}, seed {seed}, then after op {} of recovery, steps \
             {steps:?}: {e}",
            second % 24
        );
    }
}

/// `open_any_files`: bytes → arbitrary content (or a directory, or nothing) for each of
/// the six files. Opening must either fail with a typed [`ptvp35::Error`] or give a consistent
/// database: no stray file, `P.error` only appended to, writes that work, a clean close
/// that leaves `P` (and `P.error`), and a reopen that finds the same state. Never a
/// panic, a hang or an allocation beyond the input's size.
///
/// # Panics
///
/// If a rule is broken: that is the finding.
pub fn open_any_files(data: &[u8]) {
    open_any_files_as::<Hashed>(data);
}

/// [`open_any_files`] with the map `M`.
///
/// # Panics
///
/// As [`open_any_files`].
pub fn open_any_files_as<M: Kind>(data: &[u8]) {
    let mut inp = Input::new(data);
    let paths = six_paths(&db_path());
    let mut files = BTreeMap::new();
    let mut dirs = Vec::new();
    for p in &paths {
        let tag = inp.u8();
        let len = usize::from(inp.u16() % 2048);
        match tag % 4 {
            0 => {}
            3 => dirs.push(p.clone()),
            _ => {
                files.insert(p.clone(), inp.bytes(len).to_vec());
            }
        }
    }
    // What is left goes to the main file, so that plain NDJSON inputs reach the parser.
    if inp.more() {
        let rest = inp.bytes(usize::MAX);
        files
            .entry(paths[0].clone())
            .or_default()
            .extend_from_slice(rest);
    }
    let fs = SimFs::with_files(&files);
    for d in &dirs {
        fs.make_dir(d);
    }
    let opts = Options::new().preallocate(data.first().is_some_and(|b| b & 0x80 != 0));
    let db: DbConnection<String, serde_json::Value, M> = match open_typed(&fs, &opts) {
        Ok(db) => db,
        Err(e) => {
            // A typed error with a message; nothing more to check.
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let perr = &paths[5];
    let old_err = files.get(perr).cloned().unwrap_or_default();
    let new_err = fs.file(perr).unwrap_or_default();
    assert!(
        new_err.starts_with(&old_err),
        "recovery rewrote what P.error held"
    );
    assert!(strays(&fs).is_empty(), "stray files: {:?}", strays(&fs));
    let before = db.snapshot();
    let probe = "fuzz-probe".to_string();
    let wrote = db.set(probe.clone(), serde_json::json!(1)).is_ok();
    let closed = db.close();
    if closed.is_err() || !wrote {
        return;
    }
    let left: Vec<PathBuf> = fs.files().into_keys().filter(|p| p != perr).collect();
    assert_eq!(left, [paths[0].clone()], "a clean close left {left:?}");
    let again: DbConnection<String, serde_json::Value, M> = match open_typed(&fs, &opts) {
        Ok(db) => db,
        Err(e) => panic!("reopening after a clean close failed: {e}"),
    };
    let mut want = before;
    want.insert(probe, serde_json::json!(1));
    assert!(again.recovery_report().was_clean());
    assert_eq!(again.snapshot(), want, "reopen after a clean close");
    drop(again.close());
}

/// One level of nested views in the `transactions` model: its delta.
type Level = BTreeMap<String, Option<u64>>;

/// `transactions`: bytes → operations on a stack of nested `Transaction` guards over a
/// database (set, remove, reads checked at every level, nested guards that submit, roll
/// back, panic or commit, writes on the database underneath), all mirrored by a model;
/// the database must match the model after every step, and again after close and reopen.
///
/// # Panics
///
/// If the database and the model disagree: that is the finding.
pub fn transactions(data: &[u8]) {
    transactions_as::<Hashed>(data);
}

/// [`transactions`] with the map `M`.
///
/// # Panics
///
/// As [`transactions`].
pub fn transactions_as<M: Kind>(data: &[u8]) {
    quiet_intended_panics();
    let fs = SimFs::new();
    let opts = Options::new();
    let db = open_on_as::<M>(&fs, &opts).expect("a fresh database opens");
    let mut model = Model::default();
    let mut inp = Input::new(data);
    while inp.more() {
        let tx = db.transaction();
        let mut stack = vec![Level::new()];
        let end = level(&db, &tx, &mut inp, &mut model, &mut stack, 0);
        finish(tx, end, &mut model, &mut stack);
        assert_eq!(state_of(&db), model.current(), "after a root transaction");
    }
    let want = state_of(&db);
    db.close().expect("close");
    let db = open_on_as::<M>(&fs, &opts).expect("reopen");
    assert_eq!(state_of(&db), want, "after close and reopen");
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Submit,
    Rollback,
    Commit,
    Panic,
}

fn view_get(model: &Model, stack: &[Level], k: &str) -> Option<u64> {
    for l in stack.iter().rev() {
        if let Some(v) = l.get(k) {
            return *v;
        }
    }
    model.current().get(k).copied()
}

/// Runs operations on `view` (depth `depth` of `stack`) until the input says how the view
/// ends, and returns that.
fn level<M: Kind>(
    db: &Db<M>,
    view: &TransactionView<'_, String, u64>,
    inp: &mut Input<'_>,
    model: &mut Model,
    stack: &mut Vec<Level>,
    depth: usize,
) -> End {
    for _ in 0..64 {
        if !inp.more() {
            break;
        }
        let k = key(inp.u8() % 8);
        match inp.u8() % 10 {
            0 | 1 => {
                let v = model.value();
                view.set_nowait(k.clone(), v).expect("set_nowait");
                stack[depth].insert(k, Some(v));
            }
            2 => {
                view.remove_nowait(&k).expect("remove_nowait");
                stack[depth].insert(k, None);
            }
            3 => assert_eq!(
                view.get(&k),
                view_get(model, stack, &k),
                "get {k} at {depth}"
            ),
            4 if depth < 6 => {
                let end = if inp.u8().is_multiple_of(5) {
                    End::Panic
                } else {
                    End::Submit
                };
                stack.push(Level::new());
                if end == End::Panic {
                    let r = panic::catch_unwind(AssertUnwindSafe(|| {
                        let t = view.transaction();
                        let _ = level(db, &t, inp, model, stack, depth + 1);
                        panic::panic_any(IntendedPanic);
                    }));
                    assert!(r.is_err());
                    stack.pop();
                } else {
                    let t = view.transaction();
                    let end = level(db, &t, inp, model, stack, depth + 1);
                    finish(t, end, model, stack);
                }
            }
            5 => {
                // A write on the database underneath: views see it where they have no
                // change of their own.
                let v = model.value();
                db.set(k.clone(), v).expect("set");
                let i = model.submit(BTreeMap::from([(k, Some(v))]));
                model.ack(i);
            }
            6 => return End::Rollback,
            7 => return End::Commit,
            8 => return End::Submit,
            _ => {
                view.rollback();
                stack[depth].clear();
            }
        }
    }
    End::Submit
}

/// Ends guard `t` (the top of `stack`) as `end` says, mirroring it in the model.
fn finish(
    t: ptvp35::Transaction<'_, String, u64>,
    end: End,
    model: &mut Model,
    stack: &mut Vec<Level>,
) {
    let own = stack.pop().unwrap_or_default();
    match end {
        End::Rollback => t.rollback(),
        End::Panic => unreachable!("panics are handled where they are raised"),
        End::Submit => {
            drop(t);
            match stack.last_mut() {
                Some(parent) => parent.extend(own),
                None => {
                    model.submit(own);
                }
            }
        }
        End::Commit => {
            t.commit().expect("commit");
            // The whole chain of ancestors goes down with it, each delta emptied.
            let mut all = Level::new();
            for l in stack.iter_mut() {
                all.append(l);
            }
            all.extend(own);
            let i = model.submit(all);
            model.ack(i);
        }
    }
}
