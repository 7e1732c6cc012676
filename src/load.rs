//! Reading the main file into the map at open: split into chunks at line boundaries,
//! parsed on several threads, applied in file order.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::codec::{self, Record};
use crate::delta::{Key, Value};
use crate::error::{Error, Result};
use crate::map::{Map, SHARDS};

/// Parses all of `data` (every byte of it vouched for by recovery) into a map. Returns the
/// map and the number of records.
///
/// The file is split at line boundaries into one chunk per thread, and each thread parses
/// its chunk and sorts the records by the half of the map their key belongs to; then one
/// thread per half applies the records of every chunk, in file order. A key always lives
/// in the same half, so the last record of each key wins, as in a sequential read.
pub(crate) fn load<K: Key, V: Value>(
    data: &[u8],
    path: &Path,
    threads: usize,
) -> Result<(Map<K, V>, u64)> {
    if let Some(last) = data.last() {
        if *last != b'\n' {
            let start = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let line = count_lines(data) + 1;
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
    let parsed: Vec<Result<Parsed<K, V>>> = {
        let map = &map;
        if chunks.len() == 1 {
            // On this thread, but a panic in user code (`Deserialize`, `Hash`) is an
            // open error all the same.
            let parsed = catch_unwind(AssertUnwindSafe(|| parse_chunk(data, 0, path, map)));
            vec![parsed.unwrap_or_else(|_| Err(panicked(path)))]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|&(start, end)| {
                        s.spawn(move || parse_chunk(&data[start..end], start, path, map))
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
    let mut halves: [Vec<Vec<Record<K, V>>>; 2] = [Vec::new(), Vec::new()];
    let mut per_shard = vec![0usize; SHARDS];
    for (chunk, &(start, end)) in parsed.into_iter().zip(&chunks) {
        let p = chunk.map_err(|e| renumber(e, lines_before))?;
        lines_before += count_lines(&data[start..end]);
        let [lo, hi] = p.halves;
        records += (lo.len() + hi.len()) as u64;
        halves[0].push(lo);
        halves[1].push(hi);
        for (n, c) in per_shard.iter_mut().zip(&p.per_shard) {
            *n += c;
        }
    }
    map.load(halves, &per_shard).map_err(|()| {
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

/// One chunk's records, split by the half of the map their key belongs to, and how many
/// fall in each shard.
struct Parsed<K, V> {
    halves: [Vec<Record<K, V>>; 2],
    per_shard: Vec<usize>,
}

/// Number of `\n` in `data`.
pub(crate) fn count_lines(data: &[u8]) -> u64 {
    data.iter().fold(0, |n, &b| n + u64::from(b == b'\n'))
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

/// Splits `data` into up to `n` ranges that end on line boundaries.
fn split_lines(data: &[u8], n: usize) -> Vec<(usize, usize)> {
    let n = if data.len() < (1 << 20) { 1 } else { n.max(1) };
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..n {
        let target = (data.len() * i / n).max(start);
        let end = data[target..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |p| target + p + 1);
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

fn parse_chunk<K: Key, V: Value>(
    chunk: &[u8],
    base: usize,
    path: &Path,
    map: &Map<K, V>,
) -> Result<Parsed<K, V>> {
    let mut out = Parsed {
        halves: [Vec::new(), Vec::new()],
        per_shard: vec![0; SHARDS],
    };
    let mut pos = 0;
    let mut line_no = 0u64;
    while pos < chunk.len() {
        let end = chunk[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(chunk.len(), |p| pos + p);
        line_no += 1;
        match codec::decode(&chunk[pos..end]) {
            Ok(Some(r)) => {
                let i = map.shard_of(r.key());
                out.per_shard[i] += 1;
                out.halves[i * 2 / SHARDS].push(r);
            }
            Ok(None) => {}
            Err(reason) => {
                return Err(Error::Corrupt {
                    path: PathBuf::from(path),
                    line: line_no,
                    offset: (base + pos) as u64,
                    reason,
                })
            }
        }
        pos = end + 1;
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
        let e = load::<u64, u64>(&data, Path::new("t.db"), 2).err();
        match e {
            Some(Error::Corrupt { line, offset, .. }) => {
                assert_eq!(line, bad_line as u64);
                assert_eq!(offset, at as u64);
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
    }
}
