//! `ptvp35 apply FILE`: the other end of `tail`: reads records as NDJSON from standard
//! input and commits them to the database, one transaction per group of lines that
//! arrived together.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use crate::json::{self, Json, JsonKey};
use crate::{live, stdout_error, with_hint, Exit};

/// One line of `tail`'s output (or of a database file: a batch's `"ck"` is allowed and
/// ignored). Any other field is refused: a misspelt `"value"` must not read as a removal.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    key: Json,
    #[serde(default, deserialize_with = "present")]
    value: Option<Json>,
    #[serde(default, rename = "ck")]
    _ck: Option<IgnoredAny>,
}

/// A `"value"` that is there is `Some`, even when it is `null`; only an absent one means
/// a removal.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Json>, D::Error> {
    Json::deserialize(d).map(Some)
}

/// How long a line of standard input may be: a record larger than this is refused
/// rather than read into memory without bound.
const MAX_LINE: u64 = 1 << 30;

/// Reads standard input to its end, committing each group of lines.
pub(crate) fn apply(file: &Path, wait: Option<f64>, out: &mut dyn Write) -> Result<(), Exit> {
    let db = live::open_waiting(file, true, wait)?;
    let mut input = BufReader::with_capacity(1 << 20, io::stdin().lock());
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let (mut sets, mut removals, mut commits) = (0u64, 0u64, 0u64);
    let mut eof = false;
    while !eof {
        // A line (waiting for it), then every whole line that arrived with it: `tail`
        // flushes after each batch, so a batch normally lands in one group. The group
        // is parsed whole before any of it is applied, so a bad line commits none of it.
        let mut group: Vec<(JsonKey, Option<Json>)> = Vec::new();
        loop {
            line.clear();
            let n = (&mut input)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .map_err(|source| Exit::Io {
                    op: "read",
                    path: PathBuf::from("<stdin>"),
                    source,
                })?;
            if n == 0 {
                eof = true;
                break;
            }
            line_no += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let change = parse(&line, line_no)?;
            let key = JsonKey::new(change.key);
            readable(key.text(), "key", line_no)?;
            if let Some(value) = &change.value {
                readable(value.get(), "value", line_no)?;
            }
            group.push((key, change.value));
            if !input.buffer().contains(&b'\n') {
                break;
            }
        }
        if group.is_empty() {
            continue;
        }
        let tx = db.transaction();
        for (key, value) in group {
            let r = if let Some(value) = value {
                sets += 1;
                tx.set_nowait(key, value)
            } else {
                removals += 1;
                tx.remove_nowait(&key)
            };
            if let Err(e) = r {
                tx.rollback();
                return Err(with_hint(e, file));
            }
        }
        tx.commit().map_err(|e| with_hint(e, file))?;
        commits += 1;
    }
    db.close().map_err(|e| with_hint(e, file))?;
    writeln!(
        out,
        "{}: applied {sets} sets and {removals} removals in {commits} commits",
        file.display()
    )
    .map_err(stdout_error)
}

fn bad(line_no: u64, why: &str) -> Exit {
    Exit::Usage(format!(
        "standard input, line {line_no}: {why}; the lines before its group were committed, \
         the rest were not"
    ))
}

/// Refuses a key or value that a typed program would not read back, as `set` does.
fn readable(text: &str, what: &str, line_no: u64) -> Result<(), Exit> {
    json::readable(text).map_err(|e| {
        bad(
            line_no,
            &format!("the {what} would not read back in a program using the database ({e})"),
        )
    })
}

fn parse(line: &[u8], line_no: u64) -> Result<Change, Exit> {
    let bad = |why: String| bad(line_no, &why);
    if line.len() as u64 >= MAX_LINE && !line.ends_with(b"\n") {
        return Err(bad(format!("longer than {MAX_LINE} bytes")));
    }
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad(
            "not a record: expected {\"key\":K,\"value\":V} or {\"key\":K}".into(),
        ));
    }
    serde_json::from_slice::<Change>(line).map_err(|e| bad(format!("not a record ({e})")))
}
