//! Repair at open from the flag files: restore from `P.backup`, or cut `P` back to what the
//! truncate marker and the batch checksums vouch for. Cut bytes go to `P.error`.

use crate::codec;
use crate::error::{Error, Result};
use crate::fs::{Fs, FsFile};
use crate::storage::{self, io, Hasher, Paths};

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
    let mut file = io("open", &paths.main, fs.open(&paths.main, true))?;
    if !io("lock", &paths.main, file.try_lock())? {
        return Err(Error::Locked {
            path: paths.main.clone(),
        });
    }
    if !existed {
        report.created = true;
        storage::sync_dir(fs, paths)?;
    }

    if io("stat", &paths.recover, fs.exists(&paths.recover))? {
        // (V1) A rebuild had flagged its backup as complete.
        if io("stat", &paths.backup, fs.exists(&paths.backup))? {
            let mut backup = io("open", &paths.backup, fs.open(&paths.backup, false))?;
            if !io("lock", &paths.backup, backup.try_lock())? {
                return Err(Error::Locked {
                    path: paths.backup.clone(),
                });
            }
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
pub(crate) fn read_count(fs: &dyn Fs, paths: &Paths, data: &[u8]) -> Result<usize> {
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
    let count = usize::try_from(count)
        .ok()
        .filter(|&c| c <= data.len())
        .ok_or_else(|| {
            bad(format!(
                "records {count} valid bytes but the main file holds only {}",
                data.len()
            ))
        })?;
    if count > 0 && data[count - 1] != b'\n' {
        return Err(bad(format!(
            "count {count} does not end a line of the main file"
        )));
    }
    Ok(count)
}

/// The end of the last whole batch after `count` whose checksum holds (or `count`).
pub(crate) fn valid_end(data: &[u8], count: usize) -> usize {
    let mut hasher = Hasher::new();
    hasher.0.update(&data[..count]);
    let mut hashed_to = count;
    let mut accepted = count;
    let mut pos = count;
    while let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') {
        let line = &data[pos..pos + nl];
        if let Some((digits_at, ck)) = codec::batch_tail(line) {
            hasher.0.update(&data[hashed_to..pos + digits_at]);
            hashed_to = pos + digits_at;
            if hasher.0.digest() == ck {
                accepted = pos + nl + 1;
            }
        }
        pos += nl + 1;
    }
    accepted
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

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::Xxh3;

    fn batch(prefix: &[u8], lines: &[u8]) -> Vec<u8> {
        let mut h = Xxh3::new();
        h.update(prefix);
        let mut buf = lines.to_vec();
        codec::close_batch(&mut buf, &mut h);
        buf
    }

    #[test]
    fn valid_end_keeps_whole_checked_batches_only() {
        let base = b"{\"key\":1,\"value\":1}\n".to_vec();
        let mut data = base.clone();
        let b1 = batch(&data, b"{\"key\":2,\"value\":2}\n{\"key\":3,\"value\":3}\n");
        data.extend_from_slice(&b1);
        let after_b1 = data.len();
        let b2 = batch(&data, b"{\"key\":4,\"value\":4}\n");
        data.extend_from_slice(&b2);
        assert_eq!(valid_end(&data, base.len()), data.len());
        for cut in base.len()..data.len() {
            let want = if cut >= data.len() {
                data.len()
            } else if cut >= after_b1 {
                after_b1
            } else {
                base.len()
            };
            assert_eq!(valid_end(&data[..cut], base.len()), want, "cut at {cut}");
        }
        // A batch whose bytes were garbled is not accepted, nor anything after it.
        let mut bad = data.clone();
        bad[base.len() + 3] ^= 1;
        assert_eq!(valid_end(&bad, base.len()), base.len());
        // Stale batches written after a different prefix never pass.
        let mut other = b"{\"key\":9,\"value\":9}\n".to_vec();
        other.extend_from_slice(&b1);
        assert_eq!(valid_end(&other, 20), 20);
    }
}
