//! Repair at open from the flag files: restore from `P.backup`, or cut `P` back to what the
//! truncate marker and the batch checksums vouch for. Cut bytes go to `P.error`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fs::{Fs, FsFile};
use crate::plan::{self, Found, Restore};
use crate::storage::{self, wrap, Paths};

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
    /// checksum) and appended to `P.error`. Unacknowledged writes torn by the crash, or
    /// garbage; zero padding after them is not counted here.
    pub cut: Option<Cut>,
    /// Zero bytes dropped from the end of `P`: space the writer had preallocated, or a size
    /// update that outran its data. They held nothing.
    pub padding: u64,
}

/// Bytes that recovery cut from the end of `P` and appended to `P.error`.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-cut-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
/// if let Some(cut) = db.recovery_report().cut {
///     eprintln!("{} bytes from offset {} went to P.error", cut.len, cut.offset);
/// }
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cut {
    /// Where the cut bytes started in `P` (the new length of `P`).
    pub offset: u64,
    /// How many bytes were cut (zero padding after them not counted).
    pub len: u64,
}

impl Cut {
    /// A cut of `len` bytes from `offset`.
    #[must_use]
    pub fn new(offset: u64, len: u64) -> Self {
        Cut { offset, len }
    }
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

/// Opens and locks `P`, reads what the six files hold, plans recovery
/// ([`plan::plan`]) and carries the plan out, so that all of `P` is valid.
///
/// Every step is idempotent: a crash during recovery leaves a state that the next
/// recovery handles the same way (`docs/recovery.md`, "Recovery").
pub(crate) fn open_and_recover(fs: &dyn Fs, paths: &Paths) -> Result<Recovered> {
    let exists = |p: &Path| wrap("stat", p, fs.exists(p));
    let existed = exists(&paths.main)?;
    if !existed {
        // V0 before anything is created.
        plan::check_names(
            paths,
            false,
            exists(&paths.backup)?,
            exists(&paths.recover)?,
        )?;
    }
    let Some(mut file) = storage::open_locked(fs, &paths.main, true)? else {
        return Err(Error::Locked {
            path: paths.main.clone(),
        });
    };
    if !existed {
        storage::sync_dir(fs, paths)?;
    }
    let mut found = find(fs, paths, &mut *file)?;
    if !existed {
        found.main = None;
    }
    let plan = plan::plan(paths, &mut found)?;

    match plan.restore {
        Restore::Rename => {
            // (V1) The flagged backup becomes `P`.
            let Some(backup) = storage::open_locked(fs, &paths.backup, false)? else {
                return Err(Error::Locked {
                    path: paths.backup.clone(),
                });
            };
            wrap(
                "rename",
                &paths.backup,
                fs.rename(&paths.backup, &paths.main),
            )?;
            storage::sync_dir(fs, paths)?;
            file = backup;
        }
        Restore::DropName => {
            // (V1) Both names lead to the backup: the rename happened; drop the old name.
            storage::remove_if_exists(fs, &paths.backup)?;
            storage::sync_dir(fs, paths)?;
        }
        Restore::Done | Restore::No => {}
    }
    if plan.restore != Restore::No {
        // (V2) The truncate marker described the old `P`: drop the flag first and make
        // that durable, only then the `P.recover` that overrides it.
        storage::remove_if_exists(fs, &paths.truncate_flag)?;
        storage::sync_dir(fs, paths)?;
        storage::remove_if_exists(fs, &paths.truncate)?;
        storage::remove_if_exists(fs, &paths.recover)?;
        storage::sync_dir(fs, paths)?;
    }
    if plan.discard_backup {
        // (V3) A rebuild stopped before its backup was vouched for: `P` is authoritative.
        storage::remove_if_exists(fs, &paths.backup)?;
        storage::sync_dir(fs, paths)?;
    }
    let mut data = match plan.restore {
        Restore::Rename => found.backup_data.take().unwrap_or_default(),
        _ => found.main.take().unwrap_or_default(),
    };
    if plan.valid < data.len() {
        // (V4) Cut what no count or batch checksum vouches for, into `P.error` first.
        append_error(fs, paths, &data[plan.valid..])?;
        wrap("truncate", &paths.main, file.set_len(plan.valid as u64))?;
        wrap("fsync", &paths.main, file.sync_data())?;
        data.truncate(plan.valid);
    }
    Ok(Recovered {
        file,
        data,
        has_flag: plan.count.is_some(),
        report: plan.report,
    })
}

/// Reads what recovery needs to know of the six files; `main` is the locked `P`.
fn find(fs: &dyn Fs, paths: &Paths, main: &mut dyn FsFile) -> Result<Found> {
    let exists = |p: &Path| wrap("stat", p, fs.exists(p));
    let meta = wrap("stat", &paths.main, main.meta())?;
    let recover = exists(&paths.recover)?;
    let backup_meta = wrap("stat", &paths.backup, fs.meta(&paths.backup))?;
    let backup_is_main = backup_meta.is_some_and(|b| b.id == meta.id);
    let backup_data = if recover && backup_meta.is_some() && !backup_is_main {
        wrap("read", &paths.backup, fs.read(&paths.backup))?
    } else {
        None
    };
    Ok(Found {
        main: Some(read_all(main, paths)?),
        main_links: meta.links,
        backup: exists(&paths.backup)?,
        backup_data,
        backup_is_main,
        recover,
        truncate: wrap("read", &paths.truncate, fs.read(&paths.truncate))?,
        flag: exists(&paths.truncate_flag)?,
    })
}

fn read_all(file: &mut dyn FsFile, paths: &Paths) -> Result<Vec<u8>> {
    let len = wrap("stat", &paths.main, file.len())?;
    let len = usize::try_from(len).map_err(|_| Error::Unsupported {
        path: paths.main.clone(),
        reason: "the file is larger than this machine's address space".into(),
    })?;
    let mut data = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = wrap(
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

/// Appends what recovery cut to `P.error` and makes it durable before `P` is cut.
/// Zero bytes at either end (preallocated space, or a size update that outran its data)
/// carry nothing and are left out; a fragment that does not end a line gets a `\n` so
/// entries never run together.
pub(crate) fn append_error(fs: &dyn Fs, paths: &Paths, cut: &[u8]) -> Result<()> {
    let Some(first) = cut.iter().position(|&b| b != 0) else {
        return Ok(());
    };
    let keep = cut.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let existed = wrap("stat", &paths.error, fs.exists(&paths.error))?;
    let mut f = wrap("open", &paths.error, fs.open(&paths.error, true))?;
    let at = wrap("stat", &paths.error, f.len())?;
    let mut bytes = cut[first..keep].to_vec();
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    wrap("write", &paths.error, f.write_at(at, &bytes))?;
    wrap("fsync", &paths.error, f.sync_data())?;
    if !existed {
        storage::sync_dir(fs, paths)?;
    }
    Ok(())
}
