//! `SimFs`: an in-memory filesystem that records every operation, injects faults on
//! demand and crashes into any state a real disk could show (`docs/recovery.md`, "Crash
//! points", states the disk model; this file implements exactly that model).
//!
//! Per file (inode) it keeps the durable bytes and the list of writes and length changes
//! made since the last successful `sync_data`; per directory the durable entries and the
//! creates, renames and removals made since the last `sync_dir`. What the running program
//! reads is the live view (durable plus every pending change, as a page cache would show).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::disk::{
    describe, random_fate, role, Effect, Fate, Fault, FileOp, OpKind, PendingOp, Rng, TraceOp,
};
use ptvp35::{FileMeta, Fs, FsFile};

#[path = "sim_identity.rs"]
mod identity;
pub use identity::Owner;

#[derive(Debug, Clone, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
    /// The name it was last reached by (for traces and pending lists).
    name: PathBuf,
    /// Owner and permissions as the program sees them, and as the disk holds them (a
    /// change is durable with the file's next sync, or its directory's).
    owner: Owner,
    durable_owner: Owner,
}

#[derive(Debug, Clone)]
enum DirOp {
    Create { path: PathBuf, ino: u64 },
    Rename { from: PathBuf, to: PathBuf },
    Remove { path: PathBuf },
}

impl DirOp {
    fn dir(&self) -> PathBuf {
        let p = match self {
            DirOp::Create { path, .. } | DirOp::Remove { path } => path,
            DirOp::Rename { to, .. } => to,
        };
        parent(p)
    }

    /// Applies the operation as far as `fate` says: a rename that a crash cut in the
    /// middle, seen as ALICE's pessimistic model sees a rename (unlink the target, unlink
    /// the source, link the target), is [`Fate::Prefix`]`(1)` (target gone),
    /// `Prefix(2)` (neither name) or `Prefix(3)` (both names on the source's file).
    fn apply_fate(&self, names: &mut BTreeMap<PathBuf, u64>, fate: Fate) {
        match (self, fate) {
            (_, Fate::Lose) => {}
            (DirOp::Rename { from, to }, Fate::Prefix(k)) if k < 4 && names.contains_key(from) => {
                if k >= 1 {
                    names.remove(to);
                }
                if k == 2 {
                    names.remove(from);
                }
                if k == 3 {
                    let ino = names[from];
                    names.insert(to.clone(), ino);
                }
            }
            _ => self.apply(names),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            DirOp::Create { path, ino } => {
                names.insert(path.clone(), *ino);
            }
            DirOp::Rename { from, to } => {
                // A rename whose source is not there (its create was lost) cannot happen.
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
            DirOp::Remove { path } => {
                names.remove(path);
            }
        }
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[derive(Debug, Clone, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// The live namespace (what the program sees).
    names: BTreeMap<PathBuf, u64>,
    /// The durable namespace.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Unsynced directory operations, oldest first.
    dir_pending: Vec<DirOp>,
    /// Paths that are directories (a side file replaced by a directory).
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<u64>,
    trace: Vec<TraceOp>,
    /// Mutating operations so far (the crash points are the boundaries between them).
    ops: u64,
    /// After this many mutating operations, the machine is dead: every later one fails
    /// and changes nothing, so the state stays what it was at that instant.
    crash_after: Option<u64>,
    faults: Vec<(Fault, u64)>,
    /// Total bytes all files may hold (ENOSPC beyond).
    space: Option<u64>,
    rng: Rng,
    /// Symbolic links (absolute link path to its target as written); set up by tests,
    /// durable at once.
    symlinks: BTreeMap<PathBuf, PathBuf>,
    /// The directory that relative paths start from.
    cwd: PathBuf,
    /// Salts handed out so far.
    salts: u64,
    /// Scratch for [`State::crashed`]: old inode to new.
    shared: HashMap<u64, u64>,
    /// Operations blocked by an [`Effect::Hold`] now.
    held: u32,
    /// Operations an [`Effect::Hold`] has blocked so far, released or not.
    entered: u64,
    /// Calls of [`SimFs::release`] so far.
    releases: u64,
    /// How long every file sync takes (see [`SimFs::set_sync_time`]).
    sync_time: Duration,
}
/// The simulated filesystem. Cloning gives another handle to the same filesystem (the
/// test keeps one while the engine holds another); [`SimFs::fork`] copies it.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    /// Signals the changes of `held` and `releases`.
    holds: Arc<Condvar>,
}

/// The longest an [`Effect::Hold`] blocks if nothing releases it (a test that forgot to
/// fails instead of hanging).
const HOLD_LIMIT: Duration = Duration::from_mins(1);

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("SimFs")
            .field("files", &st.names.keys().collect::<Vec<_>>())
            .field("ops", &st.ops)
            .finish_non_exhaustive()
    }
}
fn crashed() -> io::Error {
    io::Error::other("simulated crash: the machine is down")
}
impl State {
    fn tick(&mut self, op: TraceOp) -> io::Result<Option<Effect>> {
        if self.crash_after.is_some_and(|n| self.ops >= n) {
            self.trace.push(TraceOp { failed: true, ..op });
            return Err(crashed());
        }
        self.ops += 1;
        let r = role(&op.path);
        let mut effect = None;
        for (fault, seen) in &mut self.faults {
            if fault.op == op.kind && fault.role.is_none_or(|x| x == r) {
                *seen += 1;
                if *seen == fault.nth || (fault.persistent && *seen > fault.nth) {
                    effect = Some(fault.effect);
                }
            }
        }
        // A hold that ends in a successful sync is no failure.
        let passes = op.kind == OpKind::SyncData && effect == Some(Effect::Hold { fail: None });
        self.trace.push(TraceOp {
            failed: effect.is_some() && !passes,
            ..op
        });
        Ok(effect)
    }

    fn used(&self) -> u64 {
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        live.iter()
            .filter_map(|i| self.inodes.get(i))
            .map(|n| n.live.len() as u64)
            .sum()
    }

    /// Decides the fate of every pending change of `ino` at random (a failed sync), makes
    /// the result durable and forgets the changes: the live view keeps them.
    fn settle_randomly(&mut self, ino: u64) {
        let mut rng = self.rng.clone();
        if let Some(node) = self.inodes.get_mut(&ino) {
            let stale = node.live.clone();
            for op in std::mem::take(&mut node.pending) {
                let desc = describe(&op, &node.name);
                op.apply_with(random_fate(&mut rng, &desc), &mut node.durable, &stale);
            }
        }
        self.rng = rng;
    }

    fn sync_dir_ops(&mut self, dir: &Path) {
        let named: Vec<u64> = self
            .names
            .iter()
            .filter(|(p, _)| parent(p) == dir)
            .map(|(_, i)| *i)
            .collect();
        for ino in named {
            if let Some(node) = self.inodes.get_mut(&ino) {
                node.durable_owner = node.owner;
            }
        }
        let mut keep = Vec::new();
        for op in std::mem::take(&mut self.dir_pending) {
            if op.dir() == dir {
                op.apply(&mut self.durable_names);
            } else {
                keep.push(op);
            }
        }
        self.dir_pending = keep;
    }

    fn file_mut(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other("simulated inode vanished"))
    }
}
fn injected(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "injected fault")
}

impl SimFs {
    /// An empty filesystem.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A filesystem holding `files` (path → bytes), all durable.
    #[must_use]
    pub fn with_files(files: &BTreeMap<PathBuf, Vec<u8>>) -> Self {
        let fs = SimFs::new();
        {
            let mut st = fs.state.lock();
            for (path, data) in files {
                let path = &st.abs(path);
                let ino = st.next_ino;
                st.next_ino += 1;
                st.inodes.insert(
                    ino,
                    Inode {
                        live: data.clone(),
                        durable: data.clone(),
                        name: path.clone(),
                        ..Inode::default()
                    },
                );
                st.names.insert(path.clone(), ino);
                st.durable_names.insert(path.clone(), ino);
            }
        }
        fs
    }

    /// Puts a directory at `path`: opening or reading it fails as it would on a disk.
    pub fn make_dir(&self, path: &Path) {
        let mut st = self.state.lock();
        let path = st.abs(path);
        st.dirs.insert(path);
    }

    /// An independent copy of this filesystem, live and durable state, trace and faults.
    #[must_use]
    pub fn fork(&self) -> SimFs {
        let mut st = self.state.lock().clone();
        st.locks.clear();
        st.held = 0;
        SimFs {
            state: Arc::new(Mutex::new(st)),
            holds: Arc::default(),
        }
    }

    /// Makes every file sync take `time` (slept before it takes effect, holding no lock),
    /// as a disk's flush does: for tests of what happens while a sync is under way.
    pub fn set_sync_time(&self, time: Duration) {
        self.state.lock().sync_time = time;
    }

    /// Seeds the generator that decides what a failed sync left on disk.
    pub fn set_seed(&self, seed: u64) {
        self.state.lock().rng = Rng::new(seed);
    }

    /// The machine dies after `ops` more mutating operations: every later one fails and
    /// changes nothing (reads still work), so [`crash_with`](Self::crash_with) can be taken at
    /// leisure from the state of that instant.
    pub fn crash_after(&self, ops: u64) {
        let mut st = self.state.lock();
        st.crash_after = Some(st.ops + ops);
    }

    /// True once the machine died (see [`crash_after`](Self::crash_after)).
    #[must_use]
    pub fn is_down(&self) -> bool {
        let st = self.state.lock();
        st.crash_after.is_some_and(|n| st.ops >= n)
    }

    /// Adds a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push((fault, 0));
    }

    /// Waits until an operation is blocked by an [`Effect::Hold`], at most `limit`;
    /// returns whether one is.
    #[must_use]
    pub fn wait_held(&self, limit: Duration) -> bool {
        self.wait_for_hold(limit, |st| st.held > 0)
    }

    /// Waits until [`Effect::Hold`] has blocked `n` operations in all (released or not),
    /// at most `limit`; returns whether it has. Unlike [`wait_held`](Self::wait_held),
    /// it cannot mistake a released operation that has not woken yet for the next one.
    #[must_use]
    pub fn wait_holds(&self, n: u64, limit: Duration) -> bool {
        self.wait_for_hold(limit, |st| st.entered >= n)
    }

    /// Operations an [`Effect::Hold`] has blocked so far, released or not.
    #[must_use]
    pub fn holds_entered(&self) -> u64 {
        self.state.lock().entered
    }

    fn wait_for_hold(&self, limit: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.state.lock();
        while !done(&st) {
            if self.holds.wait_until(&mut st, deadline).timed_out() {
                return done(&st);
            }
        }
        true
    }

    /// Removes every [`Effect::Hold`] fault (the others stay).
    pub fn clear_holds(&self) {
        self.state
            .lock()
            .faults
            .retain(|(f, _)| !matches!(f.effect, Effect::Hold { .. }));
    }

    /// Lets every operation blocked by an [`Effect::Hold`] go on.
    pub fn release(&self) {
        self.state.lock().releases += 1;
        self.holds.notify_all();
    }

    /// Blocks the calling operation until [`release`](Self::release) (or
    /// [`HOLD_LIMIT`]), the state unlocked meanwhile.
    fn hold(&self, st: &mut MutexGuard<'_, State>) {
        st.held += 1;
        st.entered += 1;
        self.holds.notify_all();
        let ticket = st.releases;
        let deadline = Instant::now() + HOLD_LIMIT;
        while st.releases == ticket && !self.holds.wait_until(st, deadline).timed_out() {}
        st.held -= 1;
    }

    /// Removes every fault and the space limit.
    pub fn clear_faults(&self) {
        let mut st = self.state.lock();
        st.faults.clear();
        st.space = None;
    }

    /// All files together may hold `bytes` more bytes than now; a write past that stores
    /// what fits and fails with [`io::ErrorKind::StorageFull`].
    pub fn limit_space(&self, bytes: u64) {
        let mut st = self.state.lock();
        st.space = Some(st.used() + bytes);
    }

    /// Mutating operations so far.
    #[must_use]
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Every operation so far, failed ones included.
    #[must_use]
    pub fn trace(&self) -> Vec<TraceOp> {
        self.state.lock().trace.clone()
    }

    /// The files as the running program sees them (path → bytes).
    #[must_use]
    pub fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let st = self.state.lock();
        st.names
            .iter()
            .filter_map(|(p, i)| st.inodes.get(i).map(|n| (p.clone(), n.live.clone())))
            .collect()
    }

    /// The live content of `path`, if it is a file.
    #[must_use]
    pub fn file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        st.names
            .get(&st.abs(path))
            .and_then(|i| st.inodes.get(i))
            .map(|n| n.live.clone())
    }

    /// Every change not yet durable: directory operations first, then each file's writes
    /// and length changes, each group oldest first. [`crash_with`](Self::crash_with)
    /// decides their fates in this order.
    #[must_use]
    pub fn pending(&self) -> Vec<PendingOp> {
        let st = self.state.lock();
        let mut out: Vec<PendingOp> = st
            .dir_pending
            .iter()
            .map(|op| match op {
                DirOp::Create { path, .. } => (OpKind::Create, path.clone()),
                DirOp::Rename { from, .. } => (OpKind::Rename, from.clone()),
                DirOp::Remove { path } => (OpKind::Remove, path.clone()),
            })
            .map(|(kind, path)| PendingOp {
                kind,
                path,
                offset: 0,
                len: 0,
                zeros: false,
            })
            .collect();
        let mut inos: Vec<&u64> = st.inodes.keys().collect();
        inos.sort();
        for ino in inos {
            let node = &st.inodes[ino];
            out.extend(node.pending.iter().map(|op| describe(op, &node.name)));
        }
        out
    }

    /// The state after a power cut now, with every unsynced change lost.
    #[must_use]
    pub fn crash_durable(&self) -> SimFs {
        self.crash_with(|_, _| Fate::Lose)
    }

    /// The state after a power cut now, with every unsynced change decided at random
    /// from `seed` (see [`random_fate`]).
    #[must_use]
    pub fn crash_seeded(&self, seed: u64) -> SimFs {
        let mut rng = Rng::new(seed);
        self.crash_with(|_, op| random_fate(&mut rng, op))
    }

    /// The state after a power cut now: `fate(i, op)` decides what became of the `i`-th
    /// unsynced change of [`pending`](Self::pending). Directory operations are kept or
    /// lost each on its own (a rename whose source is gone is lost too); a file's changes
    /// are applied oldest first over its durable bytes. Everything in the result is
    /// durable, and no file is locked.
    #[must_use]
    pub fn crash_with(&self, mut fate: impl FnMut(usize, &PendingOp) -> Fate) -> SimFs {
        let pending = self.pending();
        let st = self.state.lock();
        let mut i = 0;
        let mut names = st.durable_names.clone();
        for op in &st.dir_pending {
            op.apply_fate(&mut names, fate(i, &pending[i]));
            i += 1;
        }
        let mut inos: Vec<&u64> = st.inodes.keys().collect();
        inos.sort();
        let mut contents: HashMap<u64, Vec<u8>> = HashMap::new();
        for ino in inos {
            let node = &st.inodes[ino];
            let mut buf = node.durable.clone();
            for op in &node.pending {
                op.apply_with(fate(i, &pending[i]), &mut buf, &node.live);
                i += 1;
            }
            contents.insert(*ino, buf);
        }
        st.crashed(&names, &mut contents)
    }

    fn lookup(&self, path: &Path) -> io::Result<Option<u64>> {
        let st = self.state.lock();
        let path = &st.follow(&st.abs(path))?;
        if st.dirs.contains(path) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        Ok(st.names.get(path).copied())
    }
}

impl Fs for SimFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let resolved = {
            let st = self.state.lock();
            st.follow(&st.abs(path))?
        };
        let path: &Path = &resolved;
        let ino = match self.lookup(path)? {
            Some(ino) => ino,
            None if create => {
                let mut st = self.state.lock();
                let effect = st.tick(TraceOp {
                    kind: OpKind::Create,
                    path: path.to_path_buf(),
                    to: None,
                    offset: 0,
                    len: 0,
                    failed: false,
                })?;
                if let Some(kind) = effect.map(Effect::kind) {
                    return Err(injected(kind));
                }
                let ino = st.next_ino;
                st.next_ino += 1;
                st.inodes.insert(
                    ino,
                    Inode {
                        name: path.to_path_buf(),
                        ..Inode::default()
                    },
                );
                st.names.insert(path.to_path_buf(), ino);
                st.dir_pending.push(DirOp::Create {
                    path: path.to_path_buf(),
                    ino,
                });
                ino
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
            locked: false,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let Some(ino) = self.lookup(path)? else {
            return Ok(None);
        };
        let st = self.state.lock();
        Ok(st.inodes.get(&ino).map(|n| n.live.clone()))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.state.lock();
        let path = &st.abs(path);
        Ok(st.dirs.contains(path) || st.names.contains_key(path) || st.symlinks.contains_key(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = {
            let st = self.state.lock();
            (st.abs(from), st.abs(to))
        };
        let (from, to) = (from.as_path(), to.as_path());
        if self.state.lock().dirs.contains(to) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        let mut st = self.state.lock();
        let effect = st.tick(TraceOp {
            kind: OpKind::Rename,
            path: from.to_path_buf(),
            to: Some(to.to_path_buf()),
            offset: 0,
            len: 0,
            failed: false,
        })?;
        if let Some(kind) = effect.map(Effect::kind) {
            return Err(injected(kind));
        }
        let ino = st
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        // A rename over a symbolic link replaces the link, not the file it leads to.
        st.symlinks.remove(to);
        st.names.insert(to.to_path_buf(), ino);
        st.file_mut(ino)?.name = to.to_path_buf();
        st.dir_pending.push(DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let absolute = self.state.lock().abs(path);
        let path: &Path = &absolute;
        if self.state.lock().symlinks.remove(path).is_some() {
            return Ok(());
        }
        if self.lookup(path)?.is_none() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let mut st = self.state.lock();
        let effect = st.tick(TraceOp {
            kind: OpKind::Remove,
            path: path.to_path_buf(),
            to: None,
            offset: 0,
            len: 0,
            failed: false,
        })?;
        if let Some(kind) = effect.map(Effect::kind) {
            return Err(injected(kind));
        }
        st.names.remove(path);
        st.dir_pending.push(DirOp::Remove {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let absolute = st.abs(dir);
        let dir: &Path = &absolute;
        let effect = st.tick(TraceOp {
            kind: OpKind::SyncDir,
            path: dir.to_path_buf(),
            to: None,
            offset: 0,
            len: 0,
            failed: false,
        })?;
        if let Some(kind) = effect.map(Effect::kind) {
            // Entry operations stay pending: a crash may keep or lose each, and a later
            // successful sync makes them durable (a journal does not drop metadata the way
            // a page cache marks failed data pages clean).
            return Err(injected(kind));
        }
        st.sync_dir_ops(dir);
        Ok(())
    }

    fn meta(&self, path: &Path) -> io::Result<Option<FileMeta>> {
        let Some(ino) = self.lookup(path)? else {
            return Ok(None);
        };
        self.state.lock().meta(ino).map(Some)
    }

    fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let st = self.state.lock();
        st.follow(&st.abs(path))
    }

    fn salt(&self) -> u64 {
        let mut st = self.state.lock();
        st.salts += 1;
        // Distinct and reproducible: a bijective mix of the counter.
        let mut z = st.salts.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (z ^ (z >> 31)).max(1)
    }
}

/// An open file of a [`SimFs`]; its lock ends when it is dropped.
struct SimFile {
    fs: SimFs,
    ino: u64,
    path: PathBuf,
    locked: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("path", &self.path)
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        if self.locked {
            self.fs.state.lock().locks.remove(&self.ino);
        }
    }
}

impl SimFile {
    fn op(&self, kind: OpKind, offset: u64, len: u64) -> TraceOp {
        TraceOp {
            kind,
            path: self.path.clone(),
            to: None,
            offset,
            len,
            failed: false,
        }
        .named(&self.fs, self.ino)
    }
}

impl TraceOp {
    fn named(mut self, fs: &SimFs, ino: u64) -> Self {
        if let Some(n) = fs.state.lock().inodes.get(&ino) {
            self.path.clone_from(&n.name);
        }
        self
    }
}

impl FsFile for SimFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let st = self.fs.state.lock();
        let data = &st.file_ref(self.ino)?.live;
        let at = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = buf.len().min(data.len() - at);
        buf[..n].copy_from_slice(&data[at..at + n]);
        Ok(n)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let op = self.op(OpKind::Write, offset, data.len() as u64);
        let mut st = self.fs.state.lock();
        let effect = st.tick(op)?;
        let mut keep = data.len();
        let mut error = None;
        match effect {
            Some(e @ (Effect::Fail(_) | Effect::Stall { .. } | Effect::Hold { .. })) => {
                return Err(injected(e.kind()))
            }
            Some(Effect::ShortWrite { keep: k }) => {
                keep = k.min(data.len());
                error = Some(io::Error::other("injected short write"));
            }
            None => {}
        }
        if let Some(limit) = st.space {
            let len = st.file_ref(self.ino)?.live.len() as u64;
            let grows = (offset + keep as u64).saturating_sub(len);
            let room = limit.saturating_sub(st.used());
            if grows > room {
                let fits = usize::try_from(len + room).unwrap_or(0);
                keep = fits.saturating_sub(usize::try_from(offset).unwrap_or(0));
                keep = keep.min(data.len());
                error = Some(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device (injected)",
                ));
            }
        }
        if keep > 0 {
            let node = st.file_mut(self.ino)?;
            let change = FileOp::Write {
                offset,
                data: data[..keep].to_vec(),
            };
            change.apply(&mut node.live);
            node.pending.push(change);
        }
        error.map_or(Ok(()), Err)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let op = self.op(OpKind::SetLen, len, 0);
        let mut st = self.fs.state.lock();
        if let Some(effect) = st.tick(op)? {
            return Err(injected(effect.kind()));
        }
        let node = st.file_mut(self.ino)?;
        let change = FileOp::SetLen(len);
        change.apply(&mut node.live);
        node.pending.push(change);
        Ok(())
    }

    fn len(&mut self) -> io::Result<u64> {
        let st = self.fs.state.lock();
        Ok(st.file_ref(self.ino)?.live.len() as u64)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let time = self.fs.state.lock().sync_time;
        if !time.is_zero() {
            std::thread::sleep(time);
        }
        let op = self.op(OpKind::SyncData, 0, 0);
        let mut st = self.fs.state.lock();
        let mut effect = st.tick(op)?;
        if let Some(Effect::Hold { fail }) = effect {
            self.fs.hold(&mut st);
            effect = fail.map(Effect::Fail);
        }
        if let Some(effect) = effect {
            if let Effect::Stall { ms, .. } = effect {
                drop(st);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                st = self.fs.state.lock();
            }
            st.settle_randomly(self.ino);
            return Err(injected(effect.kind()));
        }
        let node = st.file_mut(self.ino)?;
        for change in std::mem::take(&mut node.pending) {
            change.apply(&mut node.durable);
        }
        node.durable_owner = node.owner;
        Ok(())
    }

    fn meta(&mut self) -> io::Result<FileMeta> {
        self.fs.state.lock().meta(self.ino)
    }

    fn set_owner_and_mode(&mut self, like: &FileMeta) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        st.file_mut(self.ino)?.owner = Owner {
            mode: like.mode,
            uid: like.uid,
            gid: like.gid,
        };
        Ok(())
    }

    fn try_lock(&mut self) -> io::Result<bool> {
        if self.locked {
            return Ok(true);
        }
        let mut st = self.fs.state.lock();
        if !st.locks.insert(self.ino) {
            return Ok(false);
        }
        self.locked = true;
        Ok(true)
    }
}

impl State {
    fn file_ref(&self, ino: u64) -> io::Result<&Inode> {
        self.inodes
            .get(&ino)
            .ok_or_else(|| io::Error::other("simulated inode vanished"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn unsynced_data_and_entries_can_be_lost() -> io::Result<()> {
        let fs = SimFs::new();
        let mut f = fs.open(&p("d/a"), true)?;
        f.write_at(0, b"hello")?;
        f.sync_data()?;
        assert_eq!(fs.crash_durable().files().len(), 0, "entry not synced");
        fs.sync_dir(&p("d"))?;
        f.write_at(5, b" world")?;
        assert_eq!(
            fs.crash_durable().file(&p("d/a")).as_deref(),
            Some(&b"hello"[..])
        );
        let torn = fs.crash_with(|_, _| Fate::Prefix(3));
        assert_eq!(torn.file(&p("d/a")).as_deref(), Some(&b"hello wo"[..]));
        let zero = fs.crash_with(|_, _| Fate::SizeOnly {
            garbage: false,
            seed: 0,
        });
        assert_eq!(
            zero.file(&p("d/a")).as_deref(),
            Some(&b"hello\0\0\0\0\0\0"[..])
        );
        f.sync_data()?;
        assert_eq!(
            fs.crash_durable().file(&p("d/a")).as_deref(),
            Some(&b"hello world"[..])
        );
        Ok(())
    }

    #[test]
    fn failed_sync_does_not_make_data_durable_later() -> io::Result<()> {
        for seed in 0..20 {
            let fs = SimFs::with_files(&BTreeMap::from([(p("a"), b"x".to_vec())]));
            fs.set_seed(seed);
            fs.inject(Fault::eio(OpKind::SyncData, None, 1));
            let mut f = fs.open(&p("a"), false)?;
            f.write_at(1, b"yyyy")?;
            assert!(f.sync_data().is_err());
            assert!(f.sync_data().is_ok(), "a retry 'succeeds'");
            assert_eq!(fs.file(&p("a")).as_deref(), Some(&b"xyyyy"[..]), "cache");
            let disk = fs.crash_durable().file(&p("a")).unwrap_or_default();
            assert!(disk.starts_with(b"x") && disk.len() <= 5);
        }
        Ok(())
    }

    #[test]
    fn locks_are_per_inode_and_end_with_the_handle() -> io::Result<()> {
        let fs = SimFs::new();
        let mut a = fs.open(&p("a"), true)?;
        let mut b = fs.open(&p("a"), false)?;
        assert!(a.try_lock()?);
        assert!(!b.try_lock()?);
        drop(a);
        assert!(b.try_lock()?);
        Ok(())
    }

    #[test]
    fn crash_after_freezes_the_state_and_faults_fire() -> io::Result<()> {
        let fs = SimFs::new();
        fs.crash_after(2);
        let mut f = fs.open(&p("a"), true)?;
        f.write_at(0, b"ab")?;
        assert!(f.write_at(2, b"cd").is_err());
        assert!(fs.is_down());
        assert_eq!(fs.file(&p("a")).as_deref(), Some(&b"ab"[..]));
        let fs = SimFs::new();
        fs.limit_space(3);
        let mut f = fs.open(&p("a"), true)?;
        let e = f.write_at(0, b"abcd").err().map(|e| e.kind());
        assert_eq!(e, Some(io::ErrorKind::StorageFull));
        assert_eq!(fs.file(&p("a")).as_deref(), Some(&b"abc"[..]));
        fs.inject(Fault {
            op: OpKind::Rename,
            role: None,
            nth: 1,
            persistent: true,
            effect: Effect::Fail(io::ErrorKind::PermissionDenied),
        });
        assert!(fs.rename(&p("a"), &p("b")).is_err());
        assert!(fs.rename(&p("a"), &p("b")).is_err());
        Ok(())
    }
}
