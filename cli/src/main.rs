//! `ptvp35`: look inside, check, recover, repair, compact and edit the database files of
//! the `ptvp35` crate (and of the Python library that writes the same format).

mod apply;
mod args;
mod json;
mod live;
mod order;
mod progress;
mod report;
mod stream;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use args::{Cli, Command};
use clap::Parser;
use json::{Json, JsonKey, Readable, ReadableKey};
use ptvp35::{DbConnection, Error, Health, Inspection};

pub(crate) type Db = DbConnection<JsonKey, Json>;

/// Why the tool stops, the tool's own error type: the exit code and, for failures, the
/// message. Library failures keep the library's `Error`; the tool's own (a write to
/// standard output, a look at a path, a file that is not a database) are its own.
#[derive(Debug)]
pub(crate) enum Exit {
    /// An expected non-zero outcome that `run` already reported (`check` found recovery
    /// needed, `get` found no key).
    Quiet(u8),
    /// The command line is wrong (exit 64).
    Usage(String),
    /// A library call failed, with a hint for the user (or none).
    Failed(Error, String),
    /// The tool's own file operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// No database at the path, for a command that does not create one.
    NoDatabase(PathBuf),
    /// `repair` refuses a file in which no line is a record.
    NotADatabase {
        path: PathBuf,
        /// The first bad line: its number, its offset and why.
        line: u64,
        offset: u64,
        reason: String,
    },
}

impl From<Error> for Exit {
    fn from(e: Error) -> Self {
        Exit::Failed(e, String::new())
    }
}

fn main() -> ExitCode {
    let code = main_inner();
    report_peak_rss();
    code
}

/// With `PTVP35_REPORT_PEAK_RSS=1` in the environment (hidden, for the tests that bound the
/// tool's memory), prints the process's peak resident set size to standard error at exit,
/// as `ptvp35: peak RSS N kB`, where the system tells it (Linux's `/proc/self/status`).
fn report_peak_rss() {
    if std::env::var_os("PTVP35_REPORT_PEAK_RSS").is_none_or(|v| v != "1") {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
        eprintln!("ptvp35: peak RSS {}", hwm.trim());
    }
}

fn main_inner() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let r = run(cli.command, &mut out).and_then(|()| out.flush().map_err(stdout_error));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit::Quiet(code)) => {
            let _ = out.flush();
            ExitCode::from(code)
        }
        Err(Exit::Usage(msg)) => {
            eprintln!("ptvp35: {msg}");
            ExitCode::from(64)
        }
        Err(Exit::Failed(e, hint)) => {
            let _ = out.flush();
            if is_broken_pipe(&e) {
                // The reader (`head`, a closed pager) has what it wanted.
                return ExitCode::SUCCESS;
            }
            eprintln!("ptvp35: error: {}", chain(&e));
            if !hint.is_empty() {
                eprintln!("{hint}");
            }
            ExitCode::from(code_of(&e))
        }
        Err(Exit::Io { op, path, source }) => {
            let _ = out.flush();
            if source.kind() == io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("ptvp35: error: {op} failed on {}: {source}", path.display());
            ExitCode::from(3)
        }
        Err(Exit::NoDatabase(path)) => {
            let _ = out.flush();
            eprintln!("ptvp35: error: no database at {}", path.display());
            ExitCode::from(3)
        }
        Err(Exit::NotADatabase {
            path,
            line,
            offset,
            reason,
        }) => {
            let _ = out.flush();
            eprintln!(
                "ptvp35: error: {} is not a database: none of its lines is a record \
                 (line {line} at byte offset {offset}: {reason}); repair refuses to move \
                 every line to the error file",
                path.display()
            );
            eprintln!("{}", not_a_database_hint(&path));
            ExitCode::from(2)
        }
    }
}

fn code_of(e: &Error) -> u8 {
    match e {
        Error::Corrupt { .. } | Error::BadSideFile { .. } => 2,
        _ => 3,
    }
}

fn is_broken_pipe(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
}

/// The error and its sources, each once.
pub(crate) fn chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

pub(crate) fn stdout_error(e: io::Error) -> Exit {
    Exit::Io {
        op: "write",
        path: PathBuf::from("<stdout>"),
        source: e,
    }
}

fn run(command: Command, out: &mut dyn Write) -> Result<(), Exit> {
    let w = |r: io::Result<()>| r.map_err(stdout_error);
    match command {
        Command::Check { file } => report::check(&file, out),
        Command::Recover { file, wait } => {
            let db = live::open_waiting(&file, false, wait)?;
            let report = db.recovery_report().clone();
            let keys = db.len();
            db.close().map_err(|e| with_hint(e, &file))?;
            w(report::print_recovered(out, &file, &report, keys))
        }
        Command::Dump { file, format } => stream::dump(&file, format, out),
        Command::Get { file, key } => stream::get(&file, &arg(&key, "KEY")?, out),
        Command::Set {
            file,
            key,
            value,
            wait,
        } => {
            let key = writable(arg(&key, "KEY")?, "KEY")?;
            let value = live::arg_text(&value, "VALUE")?;
            let value = json::parse_arg(&value, "VALUE").map_err(Exit::Usage)?;
            check_readable(value.get(), "VALUE")?;
            let db = live::open_waiting(&file, true, wait)?;
            db.set(key, value).map_err(|e| with_hint(e, &file))?;
            db.close().map_err(|e| with_hint(e, &file))
        }
        Command::Rm { file, key, wait } => {
            let key = arg(&live::arg_text(&key, "KEY")?, "KEY")?;
            let db = live::open_waiting(&file, false, wait)?;
            let had = db.contains_key(&key);
            if had {
                db.remove(&key).map_err(|e| with_hint(e, &file))?;
            }
            db.close().map_err(|e| with_hint(e, &file))?;
            if had {
                Ok(())
            } else {
                not_found(&key, &file)
            }
        }
        Command::Compact { file, wait } => compact(&file, wait, out),
        Command::Repair { file, yes } => repair(&file, yes, out),
        Command::Stats { file } => report::stats(&file, out),
        Command::Backup { file, dest } => live::backup(&file, &dest, out),
        Command::Apply { file, wait } => apply::apply(&file, wait, out),
        Command::Tail {
            file,
            follow,
            interval,
            stop_after,
        } => live::tail(&file, follow, interval, stop_after, out),
    }
}

fn arg(text: &str, what: &str) -> Result<JsonKey, Exit> {
    json::parse_arg(text, what)
        .map(JsonKey::new)
        .map_err(Exit::Usage)
}

/// Refuses a typed `KEY` or `VALUE` that a typed program would not read back from the file
/// (a number beyond `f64`'s range, nesting past the reader's limit, a repeated object key,
/// a lone surrogate): what the library refuses to write, the tool refuses too.
fn check_readable(text: &str, what: &str) -> Result<(), Exit> {
    json::readable(text).map_err(|e| {
        let shown = match text.char_indices().nth(60) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text.to_owned(),
        };
        Exit::Usage(format!(
            "{what} {shown} would not read back as itself in a program using the database \
             ({e}); nothing was stored"
        ))
    })
}

fn writable(key: JsonKey, what: &str) -> Result<JsonKey, Exit> {
    check_readable(key.text(), what)?;
    Ok(key)
}

fn not_found(key: &JsonKey, file: &Path) -> Result<(), Exit> {
    eprintln!("ptvp35: no key {} in {}", key.text(), file.display());
    Err(Exit::Quiet(1))
}

/// Adds what to do next to the errors a user can act on.
pub(crate) fn with_hint(e: Error, file: &Path) -> Exit {
    let f = file.display();
    let hint = match &e {
        Error::Corrupt { .. } => format!(
            "hint: `ptvp35 check {f}` lists every bad line; `ptvp35 repair {f} --yes` moves \
             them to {f}.error and keeps the rest"
        ),
        Error::Locked { path } => {
            let holders = live::lock_holders(path);
            let by = if holders.is_empty() {
                "the process that has the database open".to_owned()
            } else {
                format!("process {}", holders.join(", "))
            };
            format!(
                "hint: the lock is the advisory file lock on {} (flock), held by {by}; close \
                 it there first, or pass --wait SECONDS",
                path.display()
            )
        }
        Error::BadSideFile { .. } => format!(
            "hint: `ptvp35 check {f}` shows the six files; no crash leaves this state, so \
             recovery does not guess"
        ),
        _ => String::new(),
    };
    Exit::Failed(e, hint)
}

pub(crate) fn exists(file: &Path) -> Result<bool, Exit> {
    let backup = ptvp35::SixFiles::of(file).backup;
    let stat = |p: &Path| {
        p.try_exists().map_err(|source| Exit::Io {
            op: "stat",
            path: p.to_path_buf(),
            source,
        })
    };
    Ok(stat(file)? || stat(&backup)?)
}

pub(crate) fn no_database(file: &Path) -> Exit {
    Exit::NoDatabase(file.to_path_buf())
}

fn inspect(file: &Path) -> Result<Inspection, Exit> {
    ptvp35::inspect::<ReadableKey, Readable>(file).map_err(|e| with_hint(e, file))
}

fn compact(file: &Path, wait: Option<f64>, out: &mut dyn Write) -> Result<(), Exit> {
    let before = file_len(file);
    let show = progress::wanted(before);
    if show {
        // Reading has no byte counter outside the library: say what is going on.
        eprintln!("reading {} ({})...", file.display(), progress::mib(before));
    }
    let db = live::open_waiting(file, false, wait)?;
    // Every line of the rebuilt file is `{"key":K,"value":V}\n` (18 bytes besides K and V).
    let mut total = 0u64;
    db.for_each(|k, v| total += 18 + k.text().len() as u64 + v.get().len() as u64);
    let bar = show.then(|| {
        let backup = ptvp35::SixFiles::of(file).backup;
        progress::Bar::start(format!("compact {}", file.display()), total, move || {
            std::fs::metadata(&backup).ok().map(|m| m.len())
        })
    });
    let r = db.compact();
    if let Some(bar) = bar {
        bar.finish();
    }
    r.map_err(|e| with_hint(e, file))?;
    let keys = db.len();
    db.close().map_err(|e| with_hint(e, file))?;
    let after = file_len(file);
    writeln!(
        out,
        "{}: compacted from {before} to {after} bytes ({keys} live keys)",
        file.display()
    )
    .map_err(stdout_error)
}

fn file_len(file: &Path) -> u64 {
    std::fs::metadata(file).map_or(0, |m| m.len())
}

fn repair(file: &Path, yes: bool, out: &mut dyn Write) -> Result<(), Exit> {
    let w = |r: io::Result<()>| r.map_err(stdout_error);
    let plan = inspect(file)?;
    if let Some(e) = plan.refused {
        // Repair fixes lines, not side files: it would stop where recovery stops.
        return Err(with_hint(e, file));
    }
    let f = file.display();
    if plan.bad_lines.is_empty() {
        w(writeln!(
            out,
            "{f}: no corrupt lines; nothing to repair{}",
            if plan.health() == Health::NeedsRecovery {
                " (`ptvp35 recover` runs the pending recovery)"
            } else {
                ""
            }
        ))?;
        return Ok(());
    }
    if plan.records == 0 && !yes {
        return Err(not_a_database(file, &plan));
    }
    let moved: u64 = plan.bad_lines.iter().map(|b| b.len).sum();
    w((|| {
        if plan.records == 0 {
            // The library's repair refuses this file; it says why.
            return Ok(());
        }
        writeln!(out, "{}:", if yes { "repairing" } else { "repair would" })?;
        if !plan.recovery.was_clean() {
            writeln!(out, "  first run recovery, which will:")?;
            report::print_recovery(out, file, &plan.recovery, "    ")?;
        }
        writeln!(
            out,
            "  move {} lines ({moved} bytes) to {f}.error, each after a `# ptvp35 repair: \
             line N at byte offset X: reason` line:",
            plan.bad_lines.len()
        )?;
        for b in &plan.bad_lines {
            report::print_bad(out, b)?;
        }
        writeln!(
            out,
            "  keep the other {} bytes ({} records) unchanged and in order, written to \
             {f}.backup, flagged by {f}.recover and renamed over {f}",
            plan.valid_len - moved,
            plan.records
        )
    })())?;
    if !yes {
        w(writeln!(
            out,
            "nothing was changed; run `ptvp35 repair {f} --yes` to do it"
        ))?;
        return Err(Exit::Quiet(1));
    }
    let done = ptvp35::repair::<ReadableKey, Readable>(file).map_err(|e| {
        if plan.records == 0 {
            Exit::Failed(e, not_a_database_hint(file))
        } else {
            with_hint(e, file)
        }
    })?;
    w(writeln!(
        out,
        "{f}: repaired: moved {} lines to {f}.error, kept {} bytes",
        done.moved.len(),
        done.kept_bytes
    ))
}

/// What to look at when a file with bad lines and no record is refused: it is not a
/// database, and repair would empty it.
fn not_a_database_hint(file: &Path) -> String {
    let f = file.display();
    format!(
        "hint: is {f} the database you meant? `ptvp35 check {f}` lists every line that is not \
         a record"
    )
}

/// The refusal without `--yes`, worded as the library's repair words it.
fn not_a_database(file: &Path, plan: &Inspection) -> Exit {
    let first = &plan.bad_lines[0];
    Exit::NotADatabase {
        path: file.to_path_buf(),
        line: first.line,
        offset: first.offset,
        reason: format!(
            "{} lines do not decode, the first because: {}",
            plan.bad_lines.len(),
            first.reason
        ),
    }
}
