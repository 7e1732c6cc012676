//! Commands beside a running owner: read-only opens, `check` and `stats` without the
//! lock, `backup`, `tail`, waiting for the lock, and arguments read from standard input
//! or a file.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ptvp35::{Error, Inspection, Options};

use crate::json::{Readable, ReadableKey};
use crate::{exists, no_database, stdout_error, with_hint, Db, Exit};

/// Opens the database read-only: no lock, no recovery, no file changed.
pub(crate) fn open_read_only(file: &Path) -> Result<Db, Exit> {
    if !exists(file)? {
        return Err(no_database(file));
    }
    Options::new()
        .read_only(true)
        .open(file)
        .map_err(|e| with_hint(e, file))
}

/// Opens the database to write it, waiting up to `wait` seconds while another program
/// holds its lock.
pub(crate) fn open_waiting(file: &Path, create: bool, wait: Option<f64>) -> Result<Db, Exit> {
    let deadline = Instant::now() + Duration::from_secs_f64(wait.unwrap_or(0.0).clamp(0.0, 1e9));
    loop {
        if !create && !exists(file)? {
            return Err(no_database(file));
        }
        match Options::new().compact_ratio(f64::INFINITY).open(file) {
            Err(Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r.map_err(|e| with_hint(e, file)),
        }
    }
}

/// The text of a `KEY` or `VALUE` argument: `-` reads standard input, `@PATH` the file
/// at PATH (a trailing newline is dropped), anything else is the argument itself.
pub(crate) fn arg_text(text: &str, what: &str) -> Result<String, Exit> {
    let read = if text == "-" {
        let mut s = String::new();
        io::stdin().read_to_string(&mut s).map(|_| s)
    } else if let Some(path) = text.strip_prefix('@') {
        std::fs::read_to_string(path)
    } else {
        return Ok(text.to_owned());
    };
    let mut s = read.map_err(|e| Exit::Usage(format!("cannot read {what} from {text}: {e}")))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

/// The report of `check` and `stats`: under the database's lock when it is free; when
/// another program has it open, without the lock, read as a read-only open reads (no file
/// changed either way). Returns the report and, for a database in use, who has it open
/// (`process PID (name)` where the system tells).
pub(crate) fn inspect(file: &Path) -> Result<(Inspection, Option<String>), Exit> {
    match ptvp35::inspect::<ReadableKey, Readable>(file) {
        Err(Error::Locked { path }) => {
            let r = ptvp35::inspect_unlocked::<ReadableKey, Readable>(file)
                .map_err(|e| with_hint(e, file))?;
            let holders = lock_holders(&path);
            let who = if holders.is_empty() {
                "another program".to_owned()
            } else {
                format!("process {}", holders.join(", "))
            };
            Ok((r, Some(who)))
        }
        r => Ok((r.map_err(|e| with_hint(e, file))?, None)),
    }
}

/// `ptvp35 backup FILE DEST`.
pub(crate) fn backup(file: &Path, dest: &Path, out: &mut dyn Write) -> Result<(), Exit> {
    let db = open_read_only(file)?;
    db.backup_to(dest).map_err(|e| with_hint(e, dest))?;
    writeln!(
        out,
        "{}: copied {} live keys to {}",
        file.display(),
        db.len(),
        dest.display()
    )
    .map_err(stdout_error)
}

/// `ptvp35 tail FILE [--follow]`.
pub(crate) fn tail(
    file: &Path,
    follow: bool,
    interval: f64,
    stop_after: Option<f64>,
    out: &mut dyn Write,
) -> Result<(), Exit> {
    let db = open_read_only(file)?;
    let mut result = Ok(());
    db.for_each(|k, v| {
        if result.is_ok() {
            result = writeln!(out, "{{\"key\":{},\"value\":{}}}", k.text(), v.get());
        }
    });
    result.and_then(|()| out.flush()).map_err(stdout_error)?;
    if !follow {
        return Ok(());
    }
    let started = Instant::now();
    let pause = Duration::from_secs_f64(interval.clamp(0.001, 3600.0));
    loop {
        if stop_after.is_some_and(|s| started.elapsed().as_secs_f64() >= s) {
            return Ok(());
        }
        std::thread::sleep(pause);
        let mut result = Ok(());
        db.refresh_with(|k, v| {
            if result.is_ok() {
                result = match v {
                    Some(v) => writeln!(out, "{{\"key\":{},\"value\":{}}}", k.text(), v.get()),
                    None => writeln!(out, "{{\"key\":{}}}", k.text()),
                };
            }
        })
        .map_err(|e| with_hint(e, file))?;
        // One refresh holds whole batches only: flush them together.
        result.and_then(|()| out.flush()).map_err(stdout_error)?;
    }
}

/// The processes that hold a lock on the file at `path`, as `PID (name)`, where the system
/// tells (Linux's `/proc/locks`); empty elsewhere or when nothing can be read.
#[cfg(unix)]
pub(crate) fn lock_holders(path: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(locks)) = (
        std::fs::metadata(path),
        std::fs::read_to_string("/proc/locks"),
    ) else {
        return Vec::new();
    };
    // Linux's encoding of a device number, as /proc/locks prints it: MAJOR:MINOR:INODE.
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let file = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let mut holders: Vec<String> = locks
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // "N: FLOCK ADVISORY WRITE PID DEV:INODE START END"; a waiter has "->" second.
            (f.get(1) != Some(&"->") && f.get(5) == Some(&file.as_str())).then(|| f[4])
        })
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({})", name.trim())
        })
        .collect();
    holders.dedup();
    holders
}

#[cfg(not(unix))]
pub(crate) fn lock_holders(_: &Path) -> Vec<String> {
    Vec::new()
}
