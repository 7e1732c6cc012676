//! `get` and `dump`, streamed: they read the file through a [`Snapshot`] (the region a
//! read-only open would show, no lock, no file changed) instead of loading the database,
//! so that `get` holds one record and `dump` the live keys, however large the file.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use ptvp35::Snapshot;
use serde::de::IgnoredAny;

use crate::args::Format;
use crate::json::{Json, JsonKey};
use crate::order::sort_key;
use crate::{exists, no_database, not_found, stdout_error, with_hint, Exit};

fn snapshot(file: &Path) -> Result<Snapshot, Exit> {
    if !exists(file)? {
        return Err(no_database(file));
    }
    Snapshot::open(file).map_err(|e| with_hint(e, file))
}

/// A record that the first pass read as a set reads as a removal: the bytes the
/// snapshot vouched for changed, which the protocol never does.
fn changed(file: &Path) -> Exit {
    Exit::Io {
        op: "read",
        path: file.to_path_buf(),
        source: io::Error::other("a record changed between two reads of the file"),
    }
}

/// `ptvp35 get FILE KEY`: one pass that keeps where the last record of the key is, then
/// one read of that record.
pub(crate) fn get(file: &Path, key: &JsonKey, out: &mut dyn Write) -> Result<(), Exit> {
    let mut snap = snapshot(file)?;
    let mut last = None;
    snap.for_each::<JsonKey, IgnoredAny>(|e| {
        if e.key == *key {
            last = e.value.map(|_| (e.offset, e.len));
        }
    })
    .map_err(|e| with_hint(e, file))?;
    let Some((offset, len)) = last else {
        return not_found(key, file);
    };
    let e = snap
        .read_entry::<JsonKey, Json>(offset, len)
        .map_err(|e| with_hint(e, file))?;
    let value = e.value.ok_or_else(|| changed(file))?;
    writeln!(out, "{}", value.get()).map_err(stdout_error)
}

/// `ptvp35 dump FILE`: a first pass maps each key, in key order (see `order`), to its
/// last record, then the live keys' records are read one by one.
pub(crate) fn dump(file: &Path, format: Format, out: &mut dyn Write) -> Result<(), Exit> {
    let mut snap = snapshot(file)?;
    // Each live key's sort key (which is also its identity) and its last record: the
    // map sorts and holds one compact string per key, nothing of the values.
    let mut live: BTreeMap<Box<[u8]>, (u64, u64)> = BTreeMap::new();
    snap.for_each::<JsonKey, IgnoredAny>(|e| {
        let key = sort_key(&e.key);
        match e.value {
            Some(_) => {
                live.insert(key, (e.offset, e.len));
            }
            None => {
                live.remove(&key);
            }
        }
    })
    .map_err(|e| with_hint(e, file))?;
    let w = |r: io::Result<()>| r.map_err(stdout_error);
    if format == Format::Json {
        w(write!(out, "["))?;
    }
    for (i, (offset, len)) in live.values().enumerate() {
        let e = snap
            .read_entry::<JsonKey, Json>(*offset, *len)
            .map_err(|e| with_hint(e, file))?;
        let value = e.value.ok_or_else(|| changed(file))?;
        let (sep, end) = match (format, i) {
            (Format::Ndjson, _) => ("", "\n"),
            (Format::Json, 0) => ("\n", ""),
            (Format::Json, _) => (",\n", ""),
        };
        w(write!(
            out,
            "{sep}{{\"key\":{},\"value\":{}}}{end}",
            e.key.text(),
            value.get()
        ))?;
    }
    if format == Format::Json {
        w(writeln!(
            out,
            "{}]",
            if live.is_empty() { "" } else { "\n" }
        ))?;
    }
    Ok(())
}
