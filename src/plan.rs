//! What recovery would do, decided from the six files' states without acting on them:
//! one plan for the open (which then carries it out), for `inspect` (which reports it),
//! and for anything else that must see the state recovery would produce.
//!
//! The step names (V0–V4) are those of `docs/recovery.md`, "Open (recovery)".

use std::ops::Range;

use crate::codec::chain::Chain;
use crate::error::{Error, Result};
use crate::recovery::{Cut, RecoveryReport};
use crate::storage::{self, Count, Paths};

/// The bytes of a file as the plan reads them: held in memory (`Vec<u8>`), or read piece
/// by piece from an open file (a reader that streams the valid region, `snapshot`).
pub(crate) trait Bytes {
    /// How many bytes there are.
    fn size(&self) -> usize;

    /// Calls `f` with the bytes of `range`, in order, in one or more pieces.
    ///
    /// # Errors
    ///
    /// A read that fails.
    fn pieces(&mut self, range: Range<usize>, f: &mut dyn FnMut(&[u8])) -> Result<()>;

    /// [`Chain::valid_end`] of these bytes from `from` on.
    ///
    /// # Errors
    ///
    /// A read that fails.
    fn valid_end(&mut self, chain: Chain, from: usize) -> Result<(usize, Chain)>;
}

impl Bytes for Vec<u8> {
    fn size(&self) -> usize {
        self.len()
    }

    fn pieces(&mut self, range: Range<usize>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        f(&self[range]);
        Ok(())
    }

    fn valid_end(&mut self, chain: Chain, from: usize) -> Result<(usize, Chain)> {
        Ok(chain.valid_end(self, from))
    }
}

/// The six files as found, read without changing anything: `D` holds the bytes of `P`
/// and of `P.backup` (in memory by default).
#[derive(Debug, Default)]
#[allow(clippy::struct_excessive_bools)] // one per file: whether it exists
pub(crate) struct Found<D = Vec<u8>> {
    /// The bytes of `P`, or `None` if there is no `P`.
    pub(crate) main: Option<D>,
    /// Hard links of `P` (names it has).
    pub(crate) main_links: u64,
    /// Whether `P.backup` exists.
    pub(crate) backup: bool,
    /// The bytes of `P.backup`, read when `P.recover` vouches for it (`None` otherwise).
    pub(crate) backup_data: Option<D>,
    /// `P.backup` and `P` are one file (a rename cut after it linked the target).
    pub(crate) backup_is_main: bool,
    /// Whether `P.recover` exists.
    pub(crate) recover: bool,
    /// The bytes of `P.truncate`, if it exists.
    pub(crate) truncate: Option<Vec<u8>>,
    /// Whether `P.truncate_flag` exists.
    pub(crate) flag: bool,
}

/// What V1 does with a backup that `P.recover` vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restore {
    /// No `P.recover`: nothing to restore.
    No,
    /// Rename `P.backup` over `P`.
    Rename,
    /// `P.backup` is another name of `P`: remove that name.
    DropName,
    /// The rename happened; `P` is the copy.
    Done,
}

/// The decisions of recovery for one state of the files.
#[derive(Debug)]
pub(crate) struct Plan {
    /// V1.
    pub(crate) restore: Restore,
    /// V3: remove a backup nothing vouches for.
    pub(crate) discard_backup: bool,
    /// The flag (with the count it vouches for) survives recovery: V4 ran.
    pub(crate) count: Option<Count>,
    /// With the flag: the chain after the last batch kept, to go on from (a reader
    /// follows the owner's later batches with it).
    pub(crate) chain: Option<Chain>,
    /// How many bytes of the file that ends up as `P` recovery keeps.
    pub(crate) valid: usize,
    /// What the open will report.
    pub(crate) report: RecoveryReport,
}

impl Plan {
    /// The bytes of the file that ends up as `P`.
    pub(crate) fn data<'a>(&self, found: &'a Found) -> &'a [u8] {
        let data = match self.restore {
            Restore::Rename => found.backup_data.as_deref(),
            _ => found.main.as_deref(),
        };
        data.unwrap_or_default()
    }
}

/// V0: a flag that vouches for a backup, with neither the backup nor `P` there. A rename
/// cut as ALICE's pessimistic model allows lost both names of the data: nothing can bring
/// it back, and an empty database in its place would hide the loss.
pub(crate) fn check_names(paths: &Paths, main: bool, backup: bool, recover: bool) -> Result<()> {
    if recover && !main && !backup {
        return Err(Error::BadSideFile {
            path: paths.recover.clone(),
            reason: "says the rebuilt copy P.backup holds the data, but neither it nor the \
                     main file exists; nothing was changed"
                .into(),
        });
    }
    Ok(())
}

/// Decides what recovery does with `found`.
///
/// # Errors
///
/// The refusals of recovery: V0, a main file with other hard links, a count that no
/// crash of the protocol leaves (V4), and a count that may be in characters.
pub(crate) fn plan<D: Bytes + Default>(paths: &Paths, found: &mut Found<D>) -> Result<Plan> {
    check_names(paths, found.main.is_some(), found.backup, found.recover)?;
    let mut report = RecoveryReport {
        created: found.main.is_none(),
        ..RecoveryReport::default()
    };
    let (restore, discard_backup, flag) = if found.recover {
        // V1, V2: `P` becomes (or is) the complete copy; the markers go.
        report.restored_from_backup = true;
        let restore = match (found.backup, found.backup_is_main) {
            (true, true) => Restore::DropName,
            (true, false) => Restore::Rename,
            (false, _) => Restore::Done,
        };
        (restore, false, false)
    } else {
        // V3.
        report.discarded_stale_backup = found.backup;
        (Restore::No, found.backup, found.flag)
    };
    if found.main_links > 1 && restore != Restore::Rename {
        let links = found.main_links - u64::from(restore == Restore::DropName);
        if links > 1 {
            return Err(Error::Unsupported {
                path: paths.main.clone(),
                reason: format!(
                    "the main file has {links} hard links; a rebuild would replace it under \
                     this name only and split the database in two (use a symbolic link \
                     instead)"
                ),
            });
        }
    }
    let mut plan = Plan {
        restore,
        discard_backup,
        count: None,
        chain: None,
        valid: 0,
        report,
    };
    let mut empty = D::default();
    let data = match plan.restore {
        Restore::Rename => found.backup_data.as_mut(),
        _ => found.main.as_mut(),
    }
    .unwrap_or(&mut empty);
    let size = data.size();
    plan.valid = size;
    if flag {
        // V4: bytes after the count are kept only in whole batches whose checksum holds.
        let count = read_count(paths, found.truncate.as_deref(), data)?;
        let from = usize::try_from(count.valid).unwrap_or(size);
        // A legacy chain (salt 0) also covers the bytes before the count.
        let mut chain = Chain::new(count.salt);
        if count.salt == 0 {
            data.pieces(0..from, &mut |b| chain.extend(b))?;
        }
        let (valid, chain) = data.valid_end(chain, from)?;
        plan.valid = valid;
        if plan.valid < size {
            refuse_character_count(paths, data, count)?;
            note_cut(&mut plan.report, plan.valid, data)?;
        }
        plan.count = Some(count);
        plan.chain = Some(chain);
    }
    Ok(plan)
}

/// Checks the count of `P.truncate` against `data`; a flag must vouch for a sane count.
fn read_count(paths: &Paths, bytes: Option<&[u8]>, data: &mut dyn Bytes) -> Result<Count> {
    let bad = |reason: String| Error::BadSideFile {
        path: paths.truncate.clone(),
        reason,
    };
    let bytes =
        bytes.ok_or_else(|| bad("missing, although P.truncate_flag says it is valid".into()))?;
    let count = storage::parse_count(&paths.truncate, bytes)?;
    let valid = usize::try_from(count.valid)
        .ok()
        .filter(|&c| c <= data.size())
        .ok_or_else(|| {
            bad(format!(
                "records {} valid bytes but the main file holds only {}",
                count.valid,
                data.size()
            ))
        })?;
    let mut last = b'\n';
    if valid > 0 {
        data.pieces(valid - 1..valid, &mut |b| last = b[0])?;
    }
    if last != b'\n' {
        return Err(bad(format!(
            "count {valid} does not end a line of the main file"
        )));
    }
    Ok(count)
}

/// A count written without a salt may come from the Python library, which counts
/// characters, not bytes. Where the text before the count is ASCII the two agree; where
/// it is not, the bytes after the count may be whole, synced records, and cutting them
/// would lose them without a word. Refuse instead, as `docs/format.md` promises.
fn refuse_character_count(paths: &Paths, data: &mut dyn Bytes, count: Count) -> Result<()> {
    let at = usize::try_from(count.valid).unwrap_or(usize::MAX);
    if count.salt != 0 {
        return Ok(());
    }
    let mut ascii = true;
    data.pieces(0..at.min(data.size()), &mut |b| ascii &= b.is_ascii())?;
    if ascii {
        return Ok(());
    }
    Err(Error::BadSideFile {
        path: paths.truncate.clone(),
        reason: format!(
            "counts {at} valid bytes with no salt, as the Python library writes it, and the \
             text before that point is not ASCII: the count may be in characters, so the \
             bytes after it may be whole records; nothing was cut (remove P.truncate_flag \
             to keep them all, once you have checked the last line)"
        ),
    })
}

/// Records in `report` what cutting the bytes of `P` from offset `valid` on means: the
/// data bytes in them, and the zero padding after them.
fn note_cut(report: &mut RecoveryReport, valid: usize, data: &mut dyn Bytes) -> Result<()> {
    let size = data.size();
    let mut at = valid;
    let mut data_end = valid;
    data.pieces(valid..size, &mut |b| {
        if let Some(i) = b.iter().rposition(|&x| x != 0) {
            data_end = at + i + 1;
        }
        at += b.len();
    })?;
    let data_len = data_end - valid;
    if data_len > 0 {
        report.cut = Some(Cut::new(valid as u64, data_len as u64));
    }
    report.padding = (size - data_end) as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn paths() -> Paths {
        Paths::new(Path::new("/d/p.db"))
    }

    fn found(main: &[u8]) -> Found {
        Found {
            main: Some(main.to_vec()),
            main_links: 1,
            ..Found::default()
        }
    }

    #[test]
    fn a_clean_file_is_kept_whole() -> Result<()> {
        let p = plan(&paths(), &mut found(b"{\"key\":1,\"value\":1}\n"))?;
        assert_eq!(
            (p.restore, p.discard_backup, p.valid),
            (Restore::No, false, 20)
        );
        assert!(p.report.was_clean());
        Ok(())
    }

    #[test]
    fn each_restore_branch() -> Result<()> {
        let mut f = found(b"old\n");
        f.recover = true;
        f.backup = true;
        f.backup_data = Some(b"new\n".to_vec());
        let p = plan(&paths(), &mut f)?;
        assert_eq!((p.restore, p.data(&f)), (Restore::Rename, &b"new\n"[..]));
        f.backup_is_main = true;
        f.main_links = 2;
        assert_eq!(plan(&paths(), &mut f)?.restore, Restore::DropName);
        f.backup = false;
        f.main_links = 1;
        assert_eq!(plan(&paths(), &mut f)?.restore, Restore::Done);
        f.main = None;
        assert!(matches!(
            plan(&paths(), &mut f),
            Err(Error::BadSideFile { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_torn_tail_after_the_count_is_cut_and_zeros_are_padding() -> Result<()> {
        let mut f = found(b"{\"key\":1,\"value\":1}\n{\"key\":2,\0\0\0");
        f.flag = true;
        f.truncate = Some(Count { valid: 20, salt: 5 }.to_bytes().to_vec());
        let p = plan(&paths(), &mut f)?;
        assert_eq!(p.valid, 20);
        assert_eq!((p.report.cut, p.report.padding), (Some(Cut::new(20, 9)), 3));
        f.truncate = Some(Count { valid: 21, salt: 5 }.to_bytes().to_vec());
        assert!(plan(&paths(), &mut f).is_err(), "a count inside a line");
        Ok(())
    }
}
