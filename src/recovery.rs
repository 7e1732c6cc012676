//! Repair at open from the flag files: restore from `P.backup`, or cut `P` back to what the
//! truncate marker and the batch checksums vouch for. Cut bytes go to `P.error`.

use crate::chain::Chain;
use crate::error::{Error, Result};
use crate::fs::{Fs, FsFile};
use crate::storage::{self, io, Count, Paths};

/// What recovery found at open and what it did about it.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-rep-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
/// let report = db.recovery_report();
/// if !report.was_clean() {
///     eprintln!("recovered after a crash: {report:?}");
/// }
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// `P` did not exist; an empty database was created.
    pub created: bool,
    /// `P.recover` was present: `P` was replaced by (or already was) the complete copy
    /// that a rebuild had written.
    pub restored_from_backup: bool,
    /// A `P.backup` without `P.recover` (a rebuild cut short) was deleted; `P` was intact.
    pub discarded_stale_backup: bool,
    /// Bytes cut from the end of `P` (after the recorded count, not vouched for by a batch
    /// checksum) and appended to `P.error`: `(offset, length)`. Unacknowledged writes
    /// torn by the crash, or garbage; zero padding after them is not counted here.
    pub cut: Option<(u64, u64)>,
    /// Zero bytes dropped from the end of `P`: space the writer had preallocated, or a size
    /// update that outran its data. They held nothing.
    pub padding: u64,
}

impl RecoveryReport {
    /// True if the files were exactly as a clean close leaves them.
    #[must_use]
    pub fn was_clean(&self) -> bool {
        !self.restored_from_backup
            && !self.discarded_stale_backup
            && self.cut.is_none()
            && self.padding == 0
    }
}

/// The locked main file after recovery, with its whole content, every byte of which is
/// vouched for.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) file: Box<dyn FsFile>,
    pub(crate) data: Vec<u8>,
    pub(crate) has_flag: bool,
    pub(crate) report: RecoveryReport,
}

/// Opens and locks `P`, then brings the six files to a state where all of `P` is valid.
///
/// Every step is idempotent: a crash during recovery leaves a state that the next
/// recovery handles the same way (`docs/recovery.md`, "Recovery").
pub(crate) fn open_and_recover(fs: &dyn Fs, paths: &Paths) -> Result<Recovered> {
    let mut report = RecoveryReport::default();
    let existed = io("stat", &paths.main, fs.exists(&paths.main))?;
    if !existed
        && io("stat", &paths.recover, fs.exists(&paths.recover))?
        && !io("stat", &paths.backup, fs.exists(&paths.backup))?
    {
        // (V0) The flag says the backup is the data, and neither file is there: a rename
        // that the filesystem carried out as "unlink target, unlink source, link target"
        // and lost in the middle. Nothing here can bring the data back; creating an empty
        // database would hide that. Leave the evidence as it is.
        return Err(Error::BadSideFile {
            path: paths.recover.clone(),
            reason: "says the rebuilt copy P.backup holds the data, but neither it nor the \
                     main file exists; nothing was changed"
                .into(),
        });
    }
    let Some(mut file) = storage::open_locked(fs, &paths.main, true)? else {
        return Err(Error::Locked {
            path: paths.main.clone(),
        });
    };
    if !existed {
        report.created = true;
        storage::sync_dir(fs, paths)?;
    }

    if io("stat", &paths.recover, fs.exists(&paths.recover))? {
        // (V1) A rebuild had flagged its backup as complete.
        let main_id = io("stat", &paths.main, file.meta())?.id;
        let backup_id = io("stat", &paths.backup, fs.meta(&paths.backup))?.map(|m| m.id);
        if backup_id == Some(main_id) {
            // Both names lead to the backup: the rename linked it as `P` and was cut
            // before it unlinked the old name. The rename happened; drop the old name.
            storage::remove_if_exists(fs, &paths.backup)?;
            storage::sync_dir(fs, paths)?;
        } else if backup_id.is_some() {
            let Some(backup) = storage::open_locked(fs, &paths.backup, false)? else {
                return Err(Error::Locked {
                    path: paths.backup.clone(),
                });
            };
            io(
                "rename",
                &paths.backup,
                fs.rename(&paths.backup, &paths.main),
            )?;
            storage::sync_dir(fs, paths)?;
            file = backup;
        }
        report.restored_from_backup = true;
        // (V2) The truncate marker described the old `P`: drop the flag first and make
        // that durable, only then the `P.recover` that overrides it.
        storage::remove_if_exists(fs, &paths.truncate_flag)?;
        storage::sync_dir(fs, paths)?;
        storage::remove_if_exists(fs, &paths.truncate)?;
        storage::remove_if_exists(fs, &paths.recover)?;
        storage::sync_dir(fs, paths)?;
    } else if io("stat", &paths.backup, fs.exists(&paths.backup))? {
        // (V3) A rebuild stopped before its backup was vouched for: `P` is authoritative.
        storage::remove_if_exists(fs, &paths.backup)?;
        storage::sync_dir(fs, paths)?;
        report.discarded_stale_backup = true;
    }
    check_links(&mut *file, paths)?;

    let mut data = read_all(&mut *file, paths)?;
    let has_flag = io(
        "stat",
        &paths.truncate_flag,
        fs.exists(&paths.truncate_flag),
    )?;
    if has_flag {
        // (V4) Bytes after the count are kept only in whole batches whose checksum holds.
        let count = read_count(fs, paths, &data)?;
        let valid = valid_end(&data, count);
        if valid < data.len() {
            refuse_character_count(paths, &data, count, valid)?;
            let cut = &data[valid..];
            append_error(fs, paths, cut)?;
            io("truncate", &paths.main, file.set_len(valid as u64))?;
            io("fsync", &paths.main, file.sync_data())?;
            note_cut(&mut report, valid, cut);
            data.truncate(valid);
        }
    }
    Ok(Recovered {
        file,
        data,
        has_flag,
        report,
    })
}

/// Refuses a main file with other hard links: a rebuild replaces `P` by a new file, and
/// the other names would go on naming the old one, a second database from then on.
fn check_links(file: &mut dyn FsFile, paths: &Paths) -> Result<()> {
    let links = io("stat", &paths.main, file.meta())?.links;
    if links > 1 {
        return Err(Error::Unsupported {
            path: paths.main.clone(),
            reason: format!(
                "the main file has {links} hard links; a rebuild would replace it under \
                 this name only and split the database in two (use a symbolic link instead)"
            ),
        });
    }
    Ok(())
}

/// A count written without a salt may come from the Python library, which counts
/// characters, not bytes. Where the text before the count is ASCII the two agree; where
/// it is not, the bytes after the count may be whole, synced records, and cutting them
/// would lose them without a word. Refuse instead, as `docs/format.md` promises.
fn refuse_character_count(paths: &Paths, data: &[u8], count: Count, valid: usize) -> Result<()> {
    let at = usize::try_from(count.valid).unwrap_or(usize::MAX);
    if count.salt != 0 || data[..at.min(data.len())].is_ascii() {
        return Ok(());
    }
    Err(Error::BadSideFile {
        path: paths.truncate.clone(),
        reason: format!(
            "counts {at} valid bytes with no salt, as the Python library writes it, and the \
             text before that point is not ASCII: the count may be in characters, so the \
             {} bytes after it may be whole records; nothing was cut (remove \
             P.truncate_flag to keep them all, once you have checked the last line)",
            data.len() - valid
        ),
    })
}

/// Records in `report` what cutting `cut` (the bytes of `P` from offset `valid` on) means:
/// the data bytes in it, and the zero padding after them. Shared with `check`, which
/// predicts the same report without cutting anything.
pub(crate) fn note_cut(report: &mut RecoveryReport, valid: usize, cut: &[u8]) {
    let data_len = cut.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if data_len > 0 {
        report.cut = Some((valid as u64, data_len as u64));
    }
    report.padding = (cut.len() - data_len) as u64;
}

fn read_all(file: &mut dyn FsFile, paths: &Paths) -> Result<Vec<u8>> {
    let len = io("stat", &paths.main, file.len())?;
    let len = usize::try_from(len).map_err(|_| Error::BadSideFile {
        path: paths.main.clone(),
        reason: "file is larger than this machine's address space".into(),
    })?;
    let mut data = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = io(
            "read",
            &paths.main,
            file.read_at(at as u64, &mut data[at..]),
        )?;
        if n == 0 {
            data.truncate(at);
            break;
        }
        at += n;
    }
    Ok(data)
}

/// Reads `P.truncate` and checks it against `P`; a flag must vouch for a sane count.
pub(crate) fn read_count(fs: &dyn Fs, paths: &Paths, data: &[u8]) -> Result<Count> {
    let bytes = io("read", &paths.truncate, fs.read(&paths.truncate))?.ok_or_else(|| {
        Error::BadSideFile {
            path: paths.truncate.clone(),
            reason: "missing, although P.truncate_flag says it is valid".into(),
        }
    })?;
    let count = storage::parse_count(&paths.truncate, &bytes)?;
    let bad = |reason: String| Error::BadSideFile {
        path: paths.truncate.clone(),
        reason,
    };
    let valid = usize::try_from(count.valid)
        .ok()
        .filter(|&c| c <= data.len())
        .ok_or_else(|| {
            bad(format!(
                "records {} valid bytes but the main file holds only {}",
                count.valid,
                data.len()
            ))
        })?;
    if valid > 0 && data[valid - 1] != b'\n' {
        return Err(bad(format!(
            "count {valid} does not end a line of the main file"
        )));
    }
    Ok(count)
}

/// The end of the last whole batch after the count whose checksum holds (or the count).
pub(crate) fn valid_end(data: &[u8], count: Count) -> usize {
    // `read_count` checked that the count is within `data`.
    let from = usize::try_from(count.valid)
        .unwrap_or(data.len())
        .min(data.len());
    Chain::after_count(count.salt, data, from)
        .valid_end(data, from)
        .0
}

/// Appends what recovery cut to `P.error` and makes it durable before `P` is cut.
/// Zero bytes at either end (preallocated space, or a size update that outran its data)
/// carry nothing and are left out; a fragment that does not end a line gets a `\n` so
/// entries never run together.
pub(crate) fn append_error(fs: &dyn Fs, paths: &Paths, cut: &[u8]) -> Result<()> {
    let Some(first) = cut.iter().position(|&b| b != 0) else {
        return Ok(());
    };
    let keep = cut.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let existed = io("stat", &paths.error, fs.exists(&paths.error))?;
    let mut f = io("open", &paths.error, fs.open(&paths.error, true))?;
    let at = io("stat", &paths.error, f.len())?;
    let mut bytes = cut[first..keep].to_vec();
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    io("write", &paths.error, f.write_at(at, &bytes))?;
    io("fsync", &paths.error, f.sync_data())?;
    if !existed {
        storage::sync_dir(fs, paths)?;
    }
    Ok(())
}
