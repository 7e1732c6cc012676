//! The crate's error type: what failed, and where.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Result type of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `ptvp35`.
///
/// Each variant is a case a caller may want to handle differently, and each carries the
/// context needed to act on it (the operation, the file, the line). It implements
/// [`std::error::Error`] and is `Send + Sync + 'static`, so `?` turns it into
/// `anyhow::Error` or `Box<dyn Error>`.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-err-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use ptvp35::{DbConnection, Error};
///
/// let path = dir.join("shared.db");
/// let first = DbConnection::<String, i64>::open(&path)?;
/// match DbConnection::<String, i64>::open(&path) {
///     Err(Error::Locked { path }) => println!("{} is in use", path.display()),
///     Err(other) => return Err(other.into()),
///     Ok(_) => unreachable!("one owner at a time"),
/// }
/// # first.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    Io {
        /// What was being done: `"open"`, `"write"`, `"fsync"`, `"rename"`, ...
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// What the operating system said (shared, so that every waiter of a failed
        /// batch gets the same error, OS error code included).
        source: Arc<io::Error>,
    },
    /// A line inside the valid region of a database file could not be decoded.
    ///
    /// The open is refused: nothing is skipped silently. Repair is an explicit act: the
    /// `ptvp35 repair` command moves such lines to `P.error`.
    Corrupt {
        /// The file that holds the line.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Byte offset of the start of the line.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A side file (`P.truncate`, a flag) is in a state that no crash under this crate's
    /// protocol can leave; recovery refuses to guess.
    BadSideFile {
        /// The side file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another owner (this process or another one) has the database open.
    Locked {
        /// The main file whose lock is held.
        path: PathBuf,
    },
    /// A key or value could not be stored: it does not serialize to JSON, or it would not
    /// read back as the same value (for example `f64::NAN`, which JSON cannot hold).
    ///
    /// Nothing was changed; the database keeps working.
    Serialize {
        /// Which part was refused: `"key"` or `"value"`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// An earlier write or sync failed, so the on-disk state is unknown and writes are
    /// refused until the database is reopened. Reads keep working.
    Poisoned {
        /// The failure that poisoned the database.
        cause: Arc<Error>,
    },
    /// The database was closed, or its writer thread stopped, before the request was made
    /// durable.
    Closed,
    /// [`DbConnection::transact`](crate::DbConnection::transact) gave up: other writers
    /// kept changing the keys the closure read.
    Conflict {
        /// How many times the closure ran.
        attempts: u32,
    },
    /// The file is in a state the engine will not run on, though nothing in it is
    /// corrupt: for example a main file with other hard links, which a rebuild would split
    /// into two databases. Nothing was changed.
    Unsupported {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, and what to do instead.
        reason: String,
    },
    /// There is no database at the path: neither its main file nor a rebuilt copy
    /// (`inspect` and `repair` do not create one; an open does).
    NotFound {
        /// The main file's path.
        path: PathBuf,
    },
    /// A write on a handle opened [read-only](crate::Options::read_only): read-only
    /// handles never write. Nothing was changed.
    ReadOnly {
        /// The main file of the database.
        path: PathBuf,
    },
    /// An internal failure: a thread of the engine panicked (the writer, a rebuild or a
    /// load thread), usually in user code it ran (a `Drop`, `Hash`, `Eq` or `Serialize`
    /// of a key or value). The operation did not happen; after the writer's failure,
    /// writes are refused until the database is reopened.
    Internal {
        /// What failed.
        what: String,
    },
}

impl Error {
    /// Wraps an I/O error with the operation and the path it concerns.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    /// An [`Error::Internal`] saying what failed.
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }

    /// True if this error means the on-disk state is unknown and writes are refused.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Poisoned { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, .. } => write!(f, "{op} failed on {}", path.display()),
            Error::Corrupt {
                path,
                line,
                offset,
                reason,
            } => write!(
                f,
                "corrupt record in {} at line {line} (byte offset {offset}): {reason}",
                path.display()
            ),
            Error::BadSideFile { path, reason } => {
                write!(f, "unexpected state of {}: {reason}", path.display())
            }
            Error::Locked { path } => write!(
                f,
                "database {} is locked by another owner (another process or another open handle)",
                path.display()
            ),
            Error::Serialize { what, reason } => write!(f, "cannot store this {what}: {reason}"),
            Error::Poisoned { cause } => write!(
                f,
                "writes are refused since an earlier write failed ({cause}); reopen the database to recover"
            ),
            Error::Closed => write!(f, "the database is closed"),
            Error::Conflict { attempts } => write!(
                f,
                "transaction gave up after {attempts} attempts: the keys it read kept changing"
            ),
            Error::Unsupported { path, reason } => {
                write!(f, "cannot use {} as a database: {reason}", path.display())
            }
            Error::ReadOnly { path } => write!(
                f,
                "database {} is open read-only here; writes are refused",
                path.display()
            ),
            Error::Internal { what } => write!(f, "internal failure: {what}"),
            Error::NotFound { path } => write!(f, "no database at {}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(&**source),
            Error::Poisoned { cause } => Some(&**cause),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_operation_and_path() {
        let e = Error::io(
            "fsync",
            Path::new("/tmp/x.db"),
            io::Error::other("disk on fire"),
        );
        assert_eq!(e.to_string(), "fsync failed on /tmp/x.db");
        let src = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(src.as_deref(), Some("disk on fire"));
        let d = e.clone();
        assert_eq!(d.to_string(), e.to_string());
    }

    #[test]
    fn a_clone_keeps_the_os_error_code() {
        let e = Error::io("fsync", Path::new("x.db"), io::Error::from_raw_os_error(5));
        let Error::Io { source, .. } = e.clone() else {
            panic!("not io")
        };
        assert_eq!(source.raw_os_error(), Some(5));
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static + std::error::Error>() {}
        check::<Error>();
    }
}
