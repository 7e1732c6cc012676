//! Online backup: a consistent, compacted, durable copy of an open database, written
//! beside its destination and renamed into place, while readers and writers go on.

use std::path::{Path, PathBuf};

use crate::bounds::{Key, Value};
use crate::connection::DbConnection;
use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::kind::{MapKind, Table};
use crate::storage::{self, wrap, Paths};

impl<K: Key, V: Value, M: MapKind<K, V>> DbConnection<K, V, M> {
    /// Writes a consistent, compacted, durable copy of the database to `dest`: one line
    /// per live key, as a clean close leaves a file, so that `dest` opens as a database
    /// (or reads as plain NDJSON) on its own.
    ///
    /// The copy is one state of the map, taken under every shard's read lock at once
    /// (writers wait for that moment only; readers never wait). It then waits until every
    /// write the copy holds is durable in this database, so the copy never holds a write
    /// that a failed sync could still take back, and writes it to a temporary file beside
    /// `dest` (`dest` with `.ptvp35-backup-<pid>.tmp` appended), syncs it, renames it over
    /// `dest` and syncs the directory. When it returns, `dest` is durable and holds every
    /// write acknowledged before the call. Works on read-only handles too (the state they
    /// show). Holds the whole copy in memory while it runs.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if `dest` is this database's own main file, or has side files
    /// (`dest.truncate_flag`, `dest.recover`, ...) of a database that is open or that a
    /// crash left: replacing its main file would mix two databases. [`Error::Io`] if a file
    /// operation fails (the temporary file is removed, `dest` is left as it was);
    /// [`Error::Serialize`] if a key or value no longer serializes; what
    /// [`commit`](Self::commit) returns if the writes it copied cannot be made durable.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-backup-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use ptvp35::DbConnection;
    ///
    /// let db = DbConnection::<String, i64>::open(dir.join("live.db"))?;
    /// db.set("a".into(), 1)?;
    /// db.backup_to(dir.join("copy.db"))?; // the database stays open and in use
    /// db.set("b".into(), 2)?;
    ///
    /// let copy = DbConnection::<String, i64>::open(dir.join("copy.db"))?;
    /// assert_eq!((copy.get("a"), copy.get("b")), (Some(1), None));
    /// # copy.close()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn backup_to(&self, dest: impl AsRef<Path>) -> Result<()> {
        let fs = &*self.fs;
        let dest = Paths::resolve(fs, dest.as_ref())?;
        refuse_destination(fs, &self.paths, &dest)?;
        let (pairs, _) = self
            .shared
            .map
            .with_all(|tables, seq| (M::Table::freeze_all(tables), seq));
        self.commit()?;
        let mut name = dest.main.as_os_str().to_os_string();
        name.push(format!(".ptvp35-backup-{}.tmp", std::process::id()));
        let tmp = PathBuf::from(name);
        let written = write_copy::<K, V, M::Table>(fs, &tmp, &pairs);
        drop(pairs);
        let done = written
            .and_then(|()| wrap("rename", &tmp, fs.rename(&tmp, &dest.main)))
            .and_then(|()| storage::sync_dir(fs, &dest));
        if done.is_err() {
            // Best effort: the error that matters is the one above.
            let _ = storage::remove_if_exists(fs, &tmp);
        }
        done
    }
}

/// Refuses a destination whose main file would take another database's place.
fn refuse_destination(fs: &dyn Fs, own: &Paths, dest: &Paths) -> Result<()> {
    let unsupported = |path: &Path, reason: &str| Error::Unsupported {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if dest.main == own.main {
        return Err(unsupported(
            &dest.main,
            "a backup cannot replace the database it copies",
        ));
    }
    for side in [
        &dest.backup,
        &dest.recover,
        &dest.truncate,
        &dest.truncate_flag,
    ] {
        if wrap("stat", side, fs.exists(side))? {
            return Err(unsupported(
                side,
                "the destination is a database that is open or that a crash left (it has \
                 side files); open and close it, or choose another path",
            ));
        }
    }
    Ok(())
}

/// Writes `pairs` as record lines to `tmp` and makes them durable.
fn write_copy<K: Key, V: Value, T: Table<K, V>>(
    fs: &dyn Fs,
    tmp: &Path,
    pairs: &T::Frozen,
) -> Result<()> {
    let mut file = wrap("create", tmp, fs.open(tmp, true))?;
    wrap("truncate", tmp, file.set_len(0))?;
    let mut at = 0u64;
    crate::kind::encode_all::<K, V, T>(pairs, &mut |chunk| {
        wrap("write", tmp, file.write_at(at, chunk))?;
        at += chunk.len() as u64;
        Ok(())
    })?;
    wrap("fsync", tmp, file.sync_data())
}
