//! The command line: the commands, their arguments and their help texts.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0   success (check: the files are clean, or in use by another program and consistent)
  1   check: recovery needed; get, rm: no such key; repair: refused without --yes
  2   the database is corrupt (check, and every command that opens it)
  3   any other failure: the database is locked, a file cannot be read or written
  64  bad usage: unknown option, a KEY or VALUE that is not valid JSON or that a
      program would not read back (a number beyond f64's range, nesting deeper than
      the reader's limit, an object that repeats a key)";

const KEYS: &str = "\
Keys and values are JSON: 42, true, null, [\"tuple\", 1], {\"a\": [1, 2]}, \"text\".
A bare word that is not JSON is taken as a string: `get data.db alice` is `get data.db '\"alice\"'`.";

#[derive(Debug, Parser)]
#[command(
    name = "ptvp35",
    version,
    about = "Look inside, check, repair and edit ptvp35 database files",
    long_about = "Look inside, check, repair and edit ptvp35 database files.\n\n\
        A database whose main file is FILE uses up to six paths: FILE, FILE.backup, \
        FILE.recover, FILE.truncate, FILE.truncate_flag and FILE.error. `check`, `stats`, \
        `dump`, `get`, `backup` and `tail` only read: they work on a database another \
        program has open, with read permission only, and change no file; `apply` commits \
        what `tail` prints to another database. The other \
        commands open the database, which runs recovery first, exactly as a program \
        using the library would; `--wait SECONDS` lets them wait for a database in use.",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Report the state of the six files without changing anything
    #[command(after_help = "\
Reports which side files exist, what recovery would do (restore from FILE.backup, or cut N
bytes from offset X to FILE.error), the live keys and dead records, and every line of the
valid region that does not decode, with its line number and byte offset. A line whose key or
value a typed program would not read back (a number beyond f64's range such as 1e400,
nesting deeper than the reader's limit, an object that repeats a key) counts as corrupt.

On a database another program has open (its lock is held), reports the same sections
without the lock, read as a read-only open reads (the side files, the file, the side files
again, until two readings agree), and names the process where the system tells (Linux).
The owner's session files (FILE.truncate, FILE.truncate_flag, preallocated zeros, a batch
being written, FILE.backup during a rebuild) are how an open database runs, not a crash:
the report says what recovery would do if the owner stopped at that instant.

Exit codes:
  0  clean: the files are as a clean close leaves them; or in use by another program,
     with every vouched-for line a record
  1  recovery needed: the next open will recover, then succeed (never for a database
     in use: its owner ran recovery when it opened it)
  2  corrupt: the next open would fail (see `ptvp35 repair`)
  3  a file cannot be read

Examples:
  ptvp35 check data.db
  ptvp35 check data.db || echo \"exit $?\"")]
    Check {
        /// The database's main file
        file: PathBuf,
    },
    /// Run recovery and report what it did
    #[command(after_help = "Examples:\n  ptvp35 recover data.db")]
    Recover {
        /// The database's main file
        file: PathBuf,
        /// Wait up to SECONDS for a database another program has open
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Print every live key and value, in key order, streamed
    #[command(after_help = "\
--format ndjson prints one {\"key\":K,\"value\":V} line per key; --format json prints one JSON
array of such objects.

Keys come out in one order, so the same data gives the same bytes whatever wrote it:
  - by type: null < false < true < numbers < strings < arrays < objects;
  - numbers by exact value (2 < 10 < 1e2; big integers exact), then by their text (1 < 1.0);
  - strings by the UTF-8 bytes of their text, as Rust's String orders (\"\\u00e9\" is \"é\");
  - arrays element by element, a prefix first; objects member by member as written,
    each by its name, then its value.

Reads the file as a stream (a first pass notes where each key's last record is, a second
reads those records): memory grows with the live keys, not with the file. Like a read-only
open, it takes no lock and changes no file, and shows the state recovery would produce.

Examples:
  ptvp35 dump data.db > data.ndjson
  ptvp35 dump data.db --format json | python3 -m json.tool")]
    Dump {
        /// The database's main file
        file: PathBuf,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Ndjson)]
        format: Format,
    },
    /// Print the value of KEY (exit 1 if there is none)
    #[command(after_help = format!("{KEYS}\n\nReads the file as a stream and holds one record \
        at a time,\nhowever large the file; takes no lock and changes no file.\n\nExamples:\n  ptvp35 get data.db alice\n  \
        ptvp35 get data.db '[\"tuple\", \"example\"]'"))]
    Get {
        /// The database's main file
        file: PathBuf,
        /// The key, as JSON (a bare word is a string)
        key: String,
    },
    /// Set KEY to VALUE, durably (creates the database if there is none)
    #[command(after_help = format!("{KEYS}\n\nA KEY or VALUE that a program using the \
        database would not read back is refused (exit 64):\na number beyond f64's range \
        (1e400), nesting deeper than the reader's limit, an object that repeats a key.\n\n\
        Examples:\n  ptvp35 set data.db alice 100\n  \
        ptvp35 set data.db '[\"tuple\", 1]' '{{\"dict\": \"example\"}}'"))]
    Set {
        /// The database's main file
        file: PathBuf,
        /// The key, as JSON (a bare word is a string)
        key: String,
        /// The value, as JSON (a bare word is a string); `-` reads it from standard
        /// input, `@PATH` from the file PATH
        value: String,
        /// Wait up to SECONDS for a database another program has open
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Remove KEY, durably (exit 1 if there is none)
    #[command(after_help = format!("{KEYS}\n\nExamples:\n  ptvp35 rm data.db alice"))]
    Rm {
        /// The database's main file
        file: PathBuf,
        /// The key, as JSON (a bare word is a string); `-` reads it from standard input,
        /// `@PATH` from the file PATH
        key: String,
        /// Wait up to SECONDS for a database another program has open
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Rebuild the file with only the live records
    #[command(after_help = "\
Writes a compact copy to FILE.backup, flags it with FILE.recover and renames it over FILE,
so that a crash at any point leaves one complete copy. Draws a progress bar on a terminal
for files of 8 MiB or more (PTVP35_PROGRESS=always|never overrides); quiet when piped.

Examples:
  ptvp35 compact data.db")]
    Compact {
        /// The database's main file
        file: PathBuf,
        /// Wait up to SECONDS for a database another program has open
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Move the lines that do not decode to FILE.error and keep the rest
    #[command(after_help = "\
A file in which no line is a record is not a database: repair refuses it (exit 2) and
changes nothing. Otherwise, without --yes, says what it would do and changes nothing
(exit 1). With --yes, runs
recovery, appends each bad line to FILE.error after a `# ptvp35 repair: line N at byte
offset X: reason` line, then writes the other lines, unchanged and in order, as a rebuild
does (FILE.backup, FILE.recover, rename), so that a crash leaves the old or the repaired
file, never neither.

Examples:
  ptvp35 repair data.db
  ptvp35 repair data.db --yes")]
    Repair {
        /// The database's main file
        file: PathBuf,
        /// Do it
        #[arg(long)]
        yes: bool,
    },
    /// Print sizes, record counts and the ratio of live to dead bytes
    #[command(after_help = "Reads the files without changing anything, with read \
        permission only; on a database another program has open, without its lock, as \
        `check` does.\n\nExamples:\n  ptvp35 stats data.db")]
    Stats {
        /// The database's main file
        file: PathBuf,
    },
    /// Write a consistent, compacted copy of the database to DEST, while it is in use
    #[command(after_help = "\
Reads FILE read-only (it may be open in another program), writes DEST.ptvp35-backup-PID.tmp,
syncs it and renames it over DEST: DEST is a complete database or is left as it was.

Examples:
  ptvp35 backup data.db /backups/data-$(date +%F).db")]
    Backup {
        /// The database's main file
        file: PathBuf,
        /// Where the copy goes
        dest: PathBuf,
    },
    /// Print the committed records as NDJSON; with --follow, go on as new ones become durable
    #[command(after_help = "\
Prints every live key as a {\"key\":K,\"value\":V} line, then with --follow each record
the owner commits from then on ({\"key\":K} for a removal), only whole checksummed batches,
one transaction never split, flushed batch by batch. When the owner rebuilds (or closes and
reopens) the file, tail reads it again and prints what differs: a set for each key that is new
or changed, a removal for each key that went. Applying the lines in order (`ptvp35 apply`,
or any program) reproduces the database.

Examples:
  ptvp35 tail data.db --follow | ptvp35 apply replica.db
  ptvp35 tail data.db --follow | while read -r line; do echo \"$line\"; done
  ptvp35 tail data.db --follow --interval 0.05")]
    Tail {
        /// The database's main file
        file: PathBuf,
        /// Go on printing new records until interrupted
        #[arg(long)]
        follow: bool,
        /// Seconds between two looks at the file with --follow
        #[arg(long, default_value_t = 0.2, value_name = "SECONDS")]
        interval: f64,
        /// With --follow, stop after SECONDS (for scripts and tests)
        #[arg(long, value_name = "SECONDS")]
        stop_after: Option<f64>,
    },
    /// Commit NDJSON records read from standard input (what `tail` prints) to FILE
    #[command(after_help = "\
Reads {\"key\":K,\"value\":V} lines (set) and {\"key\":K} lines (remove) from standard input
until it ends, and commits them to FILE (created if there is none), durably: a line, then
every whole line that arrived with it, as one transaction. `tail` flushes its output
after each batch, so a transaction of the source normally arrives, and is committed, whole
(a filter between them must not hold lines back: `jq --unbuffered`); after each
commit FILE holds the source's state after some prefix of its records. Blank lines are
skipped; a batch's \"ck\" field (in a database file) is ignored; any other field, a line
that is not a record, or a key or value a program would not read back stops it (exit 64)
with the line's number, the groups before it committed. Holds FILE's lock from start to
end (`--wait SECONDS` waits for it); prints a summary at the end.

Examples:
  ptvp35 tail data.db --follow | ptvp35 apply replica.db
  ptvp35 tail data.db --follow \\
    | jq --unbuffered -c 'select(.key | startswith(\"user:\"))' | ptvp35 apply users.db
  ptvp35 tail data.db --follow | ssh backup-host ptvp35 apply /srv/replica.db
  ptvp35 dump old.db | ptvp35 apply new.db

See docs/feed.md for a change feed end to end.")]
    Apply {
        /// The database's main file (created if there is none)
        file: PathBuf,
        /// Wait up to SECONDS for a database another program has open
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One JSON object per line
    Ndjson,
    /// One JSON array
    Json,
}
