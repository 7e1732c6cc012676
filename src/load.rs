//! Reading the main file into the map at open: split into chunks at line boundaries,
//! parsed on several threads, applied in file order.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::bounds::{Key, Value};
use crate::codec;
use crate::error::{Error, Result};
use crate::kind::Table;
use crate::map::{Map, Sorted};

/// Parses all of `data` (every byte of it vouched for by recovery) into a map. Returns the
/// map and the number of records.
///
/// The file is split at line boundaries into one chunk per thread, and each thread parses
/// its chunk and sorts its records for the map ([`Sorted`]); the map then fills itself
/// from the chunks in file order ([`Map::fill`]).
pub(crate) fn load<K: Key, V: Value, T: Table<K, V>>(
    data: &[u8],
    path: &Path,
    threads: usize,
) -> Result<(Map<K, V, T>, u64)> {
    if let Some(last) = data.last() {
        if *last != b'\n' {
            let start = memchr::memrchr(b'\n', data).map_or(0, |i| i + 1);
            let line = codec::count_lines(data) + 1;
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                line,
                offset: start as u64,
                reason: "the last line has no newline (a torn write that no recorded crash \
                         explains)"
                    .into(),
            });
        }
    }
    let mut map = Map::new();
    let chunks = split_lines(data, threads);
    let parsed: Vec<Result<Sorted<K, V>>> = {
        if chunks.len() == 1 {
            // On this thread, but a panic in user code (`Deserialize`, `Hash`) is an
            // open error all the same.
            let parsed = catch_unwind(AssertUnwindSafe(|| {
                parse_chunk::<K, V, T>(data, 0, path, 1)
            }));
            vec![parsed.unwrap_or_else(|_| Err(panicked(path)))]
        } else {
            std::thread::scope(|s| {
                let parts = chunks.len();
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|&(start, end)| {
                        s.spawn(move || {
                            parse_chunk::<K, V, T>(&data[start..end], start, path, parts)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(panicked(path))))
                    .collect()
            })
        }
    };
    let mut records = 0u64;
    let mut lines_before = 0u64;
    let mut sorted = Vec::with_capacity(chunks.len());
    for (chunk, &(start, end)) in parsed.into_iter().zip(&chunks) {
        let chunk = chunk.map_err(|e| renumber(e, lines_before))?;
        lines_before += codec::count_lines(&data[start..end]);
        records += chunk.len();
        sorted.push(chunk);
    }
    map.fill(sorted).map_err(|()| {
        Error::internal(format!(
            "a thread loading {} panicked (in a key's or value's Hash, Eq or Drop)",
            path.display()
        ))
    })?;
    Ok((map, records))
}

fn panicked(path: &Path) -> Error {
    Error::internal(format!("a thread parsing {} panicked", path.display()))
}

/// A chunk's line numbers count from its own start; make them count from the file's.
fn renumber(e: Error, lines_before: u64) -> Error {
    match e {
        Error::Corrupt {
            path,
            line,
            offset,
            reason,
        } => Error::Corrupt {
            path,
            line: line + lines_before,
            offset,
            reason,
        },
        other => other,
    }
}

/// Splits `data` into up to `n` ranges that end on line boundaries, of at least about
/// 1 MiB each (a thread costs more than parsing less).
fn split_lines(data: &[u8], n: usize) -> Vec<(usize, usize)> {
    let n = n.clamp(1, (data.len() >> 20).max(1));
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..n {
        let target = (data.len() * i / n).max(start);
        let end = memchr::memchr(b'\n', &data[target..]).map_or(data.len(), |p| target + p + 1);
        if end > start {
            out.push((start, end));
        }
        start = end;
    }
    if start < data.len() || out.is_empty() {
        out.push((start, data.len()));
    }
    out
}

/// Parses one chunk, sorted for a map filled in `parts` parts.
fn parse_chunk<K: Key, V: Value, T: Table<K, V>>(
    chunk: &[u8],
    base: usize,
    path: &Path,
    parts: usize,
) -> Result<Sorted<K, V>> {
    let mut out = Sorted::new::<T>(parts);
    for (line_no, line) in (1u64..).zip(codec::lines(chunk, 0)) {
        match codec::decode(line.bytes) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(reason) => {
                return Err(Error::Corrupt {
                    path: PathBuf::from(path),
                    line: line_no,
                    offset: (base + line.offset) as u64,
                    reason,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lines_ends_on_newlines() {
        let mut data = Vec::new();
        for i in 0..100_000 {
            data.extend_from_slice(format!("{{\"key\":{i},\"value\":{i}}}\n").as_bytes());
        }
        for n in 1..5 {
            let parts = split_lines(&data, n);
            assert_eq!(parts.first().map(|p| p.0), Some(0));
            assert_eq!(parts.last().map(|p| p.1), Some(data.len()));
            for w in parts.windows(2) {
                assert_eq!(w[0].1, w[1].0);
                assert_eq!(data[w[0].1 - 1], b'\n');
            }
        }
    }

    #[test]
    fn corrupt_line_numbers_count_from_file_start_across_chunks() {
        let mut data = Vec::new();
        for i in 0..100_000 {
            data.extend_from_slice(format!("{{\"key\":{i},\"value\":{i}}}\n").as_bytes());
        }
        let bad_line = 90_000;
        let offset = data
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(bad_line - 2);
        let at = offset.map_or(0, |(i, _)| i + 1);
        data[at] = b'x';
        let e = load::<u64, u64, crate::shard::Shard<u64, u64>>(&data, Path::new("t.db"), 2).err();
        match e {
            Some(Error::Corrupt { line, offset, .. }) => {
                assert_eq!(line, bad_line as u64);
                assert_eq!(offset, at as u64);
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
    }
}
