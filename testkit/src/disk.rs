//! The disk model's vocabulary: the operations that change a disk, their trace, injected
//! faults, and what becomes of an unsynced change at a crash (its [`Fate`]).

use std::io;
use std::path::{Path, PathBuf};

/// A small deterministic generator (`SplitMix64`), so every crash state is reproducible
/// from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A `usize` in `0..n` (0 if `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// The kinds of operation that change what is on disk (reads change nothing and are not
/// crash points).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// `open` with `create` that made a new file.
    Create,
    /// `write_at`.
    Write,
    /// `set_len`.
    SetLen,
    /// `sync_data` of a file.
    SyncData,
    /// `rename`.
    Rename,
    /// `remove`.
    Remove,
    /// `sync_dir`.
    SyncDir,
}

/// The role of a path among the six, from its suffix (`"P"` for anything else).
#[must_use]
pub fn role(path: &Path) -> &'static str {
    let s = path.to_string_lossy();
    for suffix in [
        ".backup",
        ".recover",
        ".truncate_flag",
        ".truncate",
        ".error",
    ] {
        if s.ends_with(suffix) {
            return match suffix {
                ".backup" => "P.backup",
                ".recover" => "P.recover",
                ".truncate_flag" => "P.truncate_flag",
                ".truncate" => "P.truncate",
                _ => "P.error",
            };
        }
    }
    "P"
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub struct TraceOp {
    /// What was done.
    pub kind: OpKind,
    /// To which path (the source of a rename; the directory of a `sync_dir`).
    pub path: PathBuf,
    /// The target of a rename.
    pub to: Option<PathBuf>,
    /// Offset of a write, new length of a `set_len`.
    pub offset: u64,
    /// Bytes of a write.
    pub len: u64,
    /// The operation returned an error (injected fault or simulated crash).
    pub failed: bool,
}

impl TraceOp {
    /// A short name such as `"write P"`, `"sync_data P.backup"`, `"rename P.backup P"`,
    /// `"sync_dir"`, independent of the directory the database lives in.
    #[must_use]
    pub fn label(&self) -> String {
        let name = match self.kind {
            OpKind::Create => "create",
            OpKind::Write => "write",
            OpKind::SetLen => "set_len",
            OpKind::SyncData => "sync_data",
            OpKind::Rename => "rename",
            OpKind::Remove => "remove",
            OpKind::SyncDir => return "sync_dir".into(),
        };
        match &self.to {
            Some(to) => format!("{name} {} {}", role(&self.path), role(to)),
            None => format!("{name} {}", role(&self.path)),
        }
    }
}

/// What an injected fault does to the operation it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The operation fails with this kind of error and changes nothing (a failed
    /// `sync_data` or `sync_dir` leaves the unsynced changes in an unknown state: each is
    /// decided at random, as at a crash, and the rest are dropped from the cache's dirty
    /// list, so a later sync does not write them).
    Fail(io::ErrorKind),
    /// A write stores its first `keep` bytes (unsynced) and then fails.
    ShortWrite {
        /// Bytes written before the error.
        keep: usize,
    },
    /// A `sync_data` takes `ms` milliseconds (a slow disk), then fails as
    /// [`Effect::Fail`] would: lets a test act while the engine waits on the disk.
    Stall {
        /// How long the call blocks.
        ms: u64,
        /// The error it then returns.
        kind: io::ErrorKind,
    },
    /// A `sync_data` blocks until [`SimFs::release`](super::SimFs::release), then fails
    /// with `fail` (as [`Effect::Fail`] would) or, with `None`, syncs: lets a test act
    /// while the engine waits on the disk, once [`SimFs::wait_held`](super::SimFs::wait_held)
    /// says it is there, whatever the machine's load. Any other operation fails at once
    /// with `fail` (or [`io::ErrorKind::Other`]).
    Hold {
        /// The error the sync returns once released, if any.
        fail: Option<io::ErrorKind>,
    },
}

impl Effect {
    pub(super) fn kind(self) -> io::ErrorKind {
        match self {
            Effect::Fail(kind) | Effect::Stall { kind, .. } => kind,
            Effect::Hold { fail } => fail.unwrap_or(io::ErrorKind::Other),
            Effect::ShortWrite { .. } => io::ErrorKind::Other,
        }
    }
}

/// A fault to inject: the `nth` (1-based) operation of kind `op` on a path of role `role`
/// (any path if `None`) gets `effect`; with `persistent`, every later matching one too.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Which operations it concerns.
    pub op: OpKind,
    /// On which file (a role from [`role`]); `None` for any.
    pub role: Option<&'static str>,
    /// Which matching operation fails first (1-based).
    pub nth: u64,
    /// Every later matching operation fails too.
    pub persistent: bool,
    /// What happens.
    pub effect: Effect,
}

impl Fault {
    /// The `nth` operation `op` on `role` fails with an I/O error (EIO).
    #[must_use]
    pub fn eio(op: OpKind, role: Option<&'static str>, nth: u64) -> Self {
        Fault {
            op,
            role,
            nth,
            persistent: false,
            effect: Effect::Fail(io::ErrorKind::Other),
        }
    }
}

/// What becomes of one unsynced change at a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It reached the disk.
    Keep,
    /// It did not.
    Lose,
    /// A write reached the disk only up to this many bytes (a torn write). For a rename,
    /// the crash cut it in the middle, as ALICE's pessimistic model sees a rename
    /// (unlink the target, unlink the source, link the target): 1, the target is gone;
    /// 2, both names are; 3, both names lead to the source's file.
    Prefix(usize),
    /// A write reached the disk in blocks of `size` bytes (aligned on file offsets), each
    /// kept or not as `seed` decides: non-prefix persistence, holes read as zeros.
    Blocks {
        /// Block size in bytes.
        size: usize,
        /// Decides which blocks are kept.
        seed: u64,
    },
    /// The file's size was updated but the data was not: the written range reads as
    /// zeros, or (with `garbage`) as stale bytes or noise.
    SizeOnly {
        /// Stale bytes or noise instead of zeros.
        garbage: bool,
        /// Decides the garbage.
        seed: u64,
    },
}

/// An unsynced change, as [`SimFs::pending`](super::SimFs::pending) lists it.
#[derive(Debug, Clone)]
pub struct PendingOp {
    /// Its kind: a directory operation or a file's write or `set_len`.
    pub kind: OpKind,
    /// The path it was made through (for a file, its name when written).
    pub path: PathBuf,
    /// Write offset or new length.
    pub offset: u64,
    /// Bytes written.
    pub len: u64,
    /// A write of zeros only (preallocation).
    pub zeros: bool,
}

#[derive(Debug, Clone)]
pub(super) enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new(0x5eed)
    }
}
pub(super) fn apply_write(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let at = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = at.saturating_add(data.len());
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[at..end].copy_from_slice(data);
}

pub(super) fn apply_len(buf: &mut Vec<u8>, len: u64) {
    buf.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
}

impl FileOp {
    pub(super) fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, data } => apply_write(buf, *offset, data),
            FileOp::SetLen(len) => apply_len(buf, *len),
        }
    }

    /// Applies the change to `buf` as `fate` says; `stale` is what garbage is taken from.
    pub(super) fn apply_with(&self, fate: Fate, buf: &mut Vec<u8>, stale: &[u8]) {
        let FileOp::Write { offset, data } = self else {
            if fate != Fate::Lose {
                self.apply(buf);
            }
            return;
        };
        match fate {
            Fate::Keep => apply_write(buf, *offset, data),
            Fate::Lose => {}
            Fate::Prefix(n) => apply_write(buf, *offset, &data[..n.min(data.len())]),
            Fate::Blocks { size, seed } => {
                let size = size.max(1) as u64;
                let mut rng = Rng::new(seed);
                let mut at = *offset;
                let end = offset + data.len() as u64;
                while at < end {
                    let block_end = ((at / size) + 1) * size;
                    let piece_end = block_end.min(end);
                    if rng.chance(1, 2) {
                        let from = usize::try_from(at - offset).unwrap_or(0);
                        let to = usize::try_from(piece_end - offset).unwrap_or(0);
                        apply_write(buf, at, &data[from..to]);
                    }
                    at = piece_end;
                }
            }
            Fate::SizeOnly { garbage, seed } => {
                let end = offset + data.len() as u64;
                let old = buf.len() as u64;
                if end > old {
                    apply_len(buf, end);
                }
                if garbage {
                    let mut rng = Rng::new(seed);
                    let fill: Vec<u8> = if !stale.is_empty() && rng.chance(1, 2) {
                        // Stale bytes that may well parse: a copy from elsewhere.
                        let start = rng.index(stale.len());
                        (0..data.len())
                            .map(|i| stale[(start + i) % stale.len()])
                            .collect()
                    } else {
                        (0..data.len())
                            .map(|_| u8::try_from(rng.below(256)).unwrap_or(0))
                            .collect()
                    };
                    // Only the part beyond the old durable length can hold garbage; what
                    // was durable stays.
                    let skip = usize::try_from(old.saturating_sub(*offset)).unwrap_or(0);
                    if skip < fill.len() {
                        apply_write(buf, offset + skip as u64, &fill[skip..]);
                    }
                }
            }
        }
    }
}

/// A random fate for one unsynced change, drawn from every kind the disk model allows.
#[must_use]
pub fn random_fate(rng: &mut Rng, op: &PendingOp) -> Fate {
    if op.kind == OpKind::Rename && rng.chance(1, 8) {
        // A rename cut in the middle, as ALICE's pessimistic model sees it.
        return Fate::Prefix(1 + rng.index(3));
    }
    if op.kind != OpKind::Write {
        return if rng.chance(1, 2) {
            Fate::Keep
        } else {
            Fate::Lose
        };
    }
    match rng.below(20) {
        0..=4 => Fate::Keep,
        5..=8 => Fate::Lose,
        9..=13 => Fate::Prefix(usize::try_from(rng.below(op.len + 1)).unwrap_or(0)),
        14..=16 => Fate::Blocks {
            size: [1, 8, 64, 512][rng.index(4)],
            seed: rng.next_u64(),
        },
        _ => Fate::SizeOnly {
            garbage: rng.chance(1, 2),
            seed: rng.next_u64(),
        },
    }
}
pub(super) fn describe(op: &FileOp, name: &Path) -> PendingOp {
    match op {
        FileOp::Write { offset, data } => PendingOp {
            kind: OpKind::Write,
            path: name.to_path_buf(),
            offset: *offset,
            len: data.len() as u64,
            zeros: data.iter().all(|&b| b == 0),
        },
        FileOp::SetLen(len) => PendingOp {
            kind: OpKind::SetLen,
            path: name.to_path_buf(),
            offset: *len,
            len: 0,
            zeros: false,
        },
    }
}
