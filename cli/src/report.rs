//! The reports of `check`, `stats` and `recover`, and the parts `repair` shares: what
//! the six files hold, what recovery would do, the corrupt lines.

use std::io::{self, Write};
use std::path::Path;

use ptvp35::{BadLine, Health, Inspection, RecoveryReport};

use crate::{chain, live, stdout_error, Exit};

pub(crate) fn check(file: &Path, out: &mut dyn Write) -> Result<(), Exit> {
    let (r, in_use) = live::inspect(file)?;
    let health = r.health();
    let w = |r: io::Result<()>| r.map_err(stdout_error);
    w(print_check(out, file, &r, health, in_use.as_deref()))?;
    match (health, in_use) {
        // An owner's open session is not a crash: its flag files are how it runs.
        (Health::Clean, _) | (Health::NeedsRecovery, Some(_)) => Ok(()),
        (Health::NeedsRecovery, None) => Err(Exit::Quiet(1)),
        _ => Err(Exit::Quiet(2)),
    }
}

fn print_check(
    out: &mut dyn Write,
    file: &Path,
    r: &Inspection,
    h: Health,
    in_use: Option<&str>,
) -> io::Result<()> {
    let state = match (h, in_use) {
        (Health::Clean | Health::NeedsRecovery, Some(who)) => {
            format!("in use by {who}, consistent")
        }
        (_, Some(who)) => format!("corrupt (in use by {who})"),
        (Health::Clean, None) => "clean".to_owned(),
        (Health::NeedsRecovery, None) => "recovery needed".to_owned(),
        _ => "corrupt".to_owned(),
    };
    writeln!(out, "{}: {state}", file.display())?;
    writeln!(out, "files:")?;
    for f in r.files.iter() {
        match f.len {
            Some(n) => writeln!(out, "  {:<40} {n} bytes", f.path.display())?,
            None => writeln!(out, "  {:<40} absent", f.path.display())?,
        }
    }
    if let Some(n) = r.truncate_count {
        writeln!(out, "recorded valid length (.truncate): {n} bytes")?;
    }
    if in_use.is_some() && r.files.truncate_flag.len.is_some() {
        writeln!(
            out,
            "the owner's open session: {}.truncate_flag vouches for the count and the \
             checksummed batches after it, {} valid bytes",
            file.display(),
            r.valid_len
        )?;
    }
    if in_use.is_some() && r.files.backup.len.is_some() {
        writeln!(
            out,
            "the owner is rebuilding the file: {}.backup is the new copy{}",
            file.display(),
            if r.files.recover.len.is_some() {
                ", flagged complete by .recover and about to replace it"
            } else {
                ", not yet complete"
            }
        )?;
    }
    if let Some(e) = &r.refused {
        writeln!(out, "recovery would refuse to open: {}", chain(e))?;
    } else {
        writeln!(
            out,
            "{}",
            if in_use.is_some() {
                "if the owner stopped now without closing, recovery would (its open session \
                 needs none of it):"
            } else {
                "recovery would:"
            }
        )?;
        print_recovery(out, file, &r.recovery, "  ")?;
        if r.recovery.was_clean() && r.files.truncate_flag.len.is_some() {
            writeln!(
                out,
                "  keep every byte ({}all of it is vouched for)",
                if in_use.is_some() {
                    ""
                } else {
                    "the session ended without a clean close; "
                }
            )?;
        }
    }
    print_counts(out, r)?;
    if !r.bad_lines.is_empty() {
        if r.records == 0 {
            writeln!(
                out,
                "no line is a record: this is not a database (`ptvp35 repair` refuses it)"
            )?;
        }
        writeln!(out, "corrupt lines ({}):", r.bad_lines.len())?;
        for b in &r.bad_lines {
            print_bad(out, b)?;
        }
        writeln!(
            out,
            "`ptvp35 repair {} --yes` moves them to the .error file and keeps the rest",
            file.display()
        )?;
    }
    Ok(())
}

pub(crate) fn print_bad(out: &mut dyn Write, b: &BadLine) -> io::Result<()> {
    writeln!(
        out,
        "  line {} at byte offset {} ({} bytes): {}",
        b.line, b.offset, b.len, b.reason
    )
}

pub(crate) fn print_recovery(
    out: &mut dyn Write,
    file: &Path,
    r: &RecoveryReport,
    indent: &str,
) -> io::Result<()> {
    let f = file.display();
    if r.was_clean() && !r.created {
        writeln!(out, "{indent}nothing (the files are consistent)")?;
    }
    if r.created {
        writeln!(out, "{indent}create {f} (it did not exist)")?;
    }
    if r.restored_from_backup {
        writeln!(
            out,
            "{indent}restore from {f}.backup (a rebuild had flagged it complete)"
        )?;
    }
    if r.discarded_stale_backup {
        writeln!(
            out,
            "{indent}delete {f}.backup (a rebuild stopped before it was complete; {f} is intact)"
        )?;
    }
    if let Some(ptvp35::Cut {
        offset: at, len: n, ..
    }) = r.cut
    {
        writeln!(
            out,
            "{indent}cut {n} bytes from offset {at} (not vouched for) and append them to {f}.error"
        )?;
    }
    if r.padding > 0 {
        writeln!(
            out,
            "{indent}drop {} zero bytes of preallocated space",
            r.padding
        )?;
    }
    Ok(())
}

pub(crate) fn print_counts(out: &mut dyn Write, r: &Inspection) -> io::Result<()> {
    writeln!(
        out,
        "records: {} ({} live keys, {} dead records)",
        r.records, r.live_keys, r.dead_records
    )?;
    writeln!(
        out,
        "bytes: {} valid, {} live, {} dead",
        r.valid_len, r.live_bytes, r.dead_bytes
    )
}

pub(crate) fn print_recovered(
    out: &mut dyn Write,
    file: &Path,
    r: &RecoveryReport,
    keys: usize,
) -> io::Result<()> {
    writeln!(out, "{}: recovered, {keys} live keys", file.display())?;
    writeln!(out, "recovery did:")?;
    print_recovery(out, file, r, "  ")
}

pub(crate) fn stats(file: &Path, out: &mut dyn Write) -> Result<(), Exit> {
    let (r, in_use) = live::inspect(file)?;
    let w = |r: io::Result<()>| r.map_err(stdout_error);
    w((|| {
        match &in_use {
            Some(who) => writeln!(out, "{} (in use by {who})", file.display())?,
            None => writeln!(out, "{}", file.display())?,
        }
        for f in r.files.iter() {
            if let Some(n) = f.len {
                writeln!(out, "  {:<40} {n} bytes", f.path.display())?;
            }
        }
        print_counts(out, &r)?;
        let total = r.live_bytes + r.dead_bytes;
        #[allow(clippy::cast_precision_loss)] // a percentage with one decimal
        let pct = if total == 0 {
            100.0
        } else {
            r.live_bytes as f64 * 100.0 / total as f64
        };
        let ratio = if r.dead_bytes == 0 {
            "no dead bytes".to_owned()
        } else {
            #[allow(clippy::cast_precision_loss)] // a ratio with two decimals
            let x = r.live_bytes as f64 / r.dead_bytes as f64;
            format!("{x:.2}")
        };
        writeln!(
            out,
            "live/dead bytes: {ratio} ({pct:.1}% of record bytes live)"
        )?;
        if !r.bad_lines.is_empty() || r.refused.is_some() {
            writeln!(
                out,
                "the database is corrupt: `ptvp35 check {}` for details",
                file.display()
            )?;
        }
        Ok(())
    })())
}
