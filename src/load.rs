//! Reading the main file into the map at open: split into chunks at line boundaries,
//! parsed on several threads, applied in file order.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::bounds::{Key, Value};
use crate::codec;
use crate::error::{Error, Result};
use crate::kind::Table;
use crate::map::{HashedRecords, Map, Part, Sorted};

/// Chunks the file is cut into per loading thread: the map fills from each chunk as
/// soon as the chunks before it are in, so that the values a later record replaces are
/// freed while the rest is parsed (and their memory reused), not all at the end.
const CHUNKS_PER_THREAD: usize = 128;

/// Parsed chunks a parsing thread may be ahead of the slowest filling thread, per parsing
/// thread: enough to keep both busy, few enough that little is held parsed but unfilled.
const AHEAD_PER_THREAD: usize = 2;

/// Parses all of `data` (every byte of it vouched for by recovery) into a map. Returns the
/// map and the number of records.
///
/// The file is split at line boundaries into chunks of at least about 1 MiB, several per
/// thread. `threads` threads parse them in file order, each sorting its chunk's records
/// by the part of the map their keys live in ([`Sorted`]); as many threads fill the
/// parts ([`Map::fill_parts`]), each applying its records chunk after chunk, in file
/// order, as soon as the chunk is parsed. Parsing stays at most a few chunks ahead of
/// filling, so that what the file's later records replace is freed early and its memory
/// reused: resident memory after the open stays near the map's own, however many
/// records the file holds for each key.
pub(crate) fn load<K: Key, V: Value, T: Table<K, V>>(
    data: &[u8],
    path: &Path,
    threads: usize,
) -> Result<(Map<K, V, T>, u64)> {
    load_in(data, path, threads, 1 << 20)
}

/// [`load`], with chunks of at least `min_chunk` bytes (tests cut small files into many).
fn load_in<K: Key, V: Value, T: Table<K, V>>(
    data: &[u8],
    path: &Path,
    threads: usize,
    min_chunk: usize,
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
    let threads = threads.max(1);
    let chunks = split_lines(data, threads * CHUNKS_PER_THREAD, min_chunk);
    let parsers = threads.min(chunks.len());
    let parts = if T::SPREAD { parsers } else { 1 };
    // Each line holds at most one record: the tables are sized for them all at once
    // (growing them as they fill costs a rehash of every key and leaves the old tables'
    // memory behind).
    let lines = usize::try_from(count_lines(data, parsers)).unwrap_or(usize::MAX);
    let mut map = Map::new();
    if parsers == 1 {
        return load_here(map, data, &chunks, path, lines);
    }
    let line = Pipeline::new(chunks.len(), parts, parsers * AHEAD_PER_THREAD);
    let filled = std::thread::scope(|s| {
        for _ in 0..parsers {
            s.spawn(|| line.parse::<T>(data, &chunks, path));
        }
        map.fill_parts(parts, |p, part| {
            part.reserve_share(lines);
            line.fill(p, part, &chunks);
        })
    });
    let st = line.state.into_inner();
    let mut records = 0;
    for slot in st.slots {
        match slot {
            Slot::Parsed { records: n, .. } => records += n,
            Slot::Failed(e) => return Err(e),
            // Not parsed: an earlier chunk failed, or a part's fill panicked.
            Slot::Waiting => break,
        }
    }
    filled.map_err(|()| fill_panicked(path))?;
    Ok((map, records))
}

/// [`load`] on one thread, this one: each chunk parsed, then applied.
fn load_here<K: Key, V: Value, T: Table<K, V>>(
    mut map: Map<K, V, T>,
    data: &[u8],
    chunks: &[(usize, usize)],
    path: &Path,
    lines: usize,
) -> Result<(Map<K, V, T>, u64)> {
    let failed = Mutex::new(None);
    let records = AtomicU64::new(0);
    let filled = map.fill_parts(1, |_, part| {
        part.reserve_share(lines);
        for &chunk in chunks {
            match parse_at::<K, V, T>(data, chunk, path, 1) {
                Ok(sorted) => {
                    records.fetch_add(sorted.len(), Ordering::Relaxed);
                    // One part: all the chunk's records.
                    for records in sorted.into_parts() {
                        part.apply(records);
                    }
                }
                Err(e) => {
                    *failed.lock() = Some(e);
                    return;
                }
            }
        }
    });
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    filled.map_err(|()| fill_panicked(path))?;
    Ok((map, records.into_inner()))
}

fn fill_panicked(path: &Path) -> Error {
    Error::internal(format!(
        "a thread loading {} panicked (in a key's or value's Hash, Eq or Drop)",
        path.display()
    ))
}

/// What the parsing and the filling threads of one open share.
struct Pipeline<K, V> {
    state: Mutex<State<K, V>>,
    /// A chunk was parsed or filled, or the load stopped.
    changed: Condvar,
    /// Chunks parsed but not yet filled by every part, at most.
    ahead: usize,
}

struct State<K, V> {
    slots: Vec<Slot<K, V>>,
    /// The next chunk to parse.
    next: usize,
    /// Chunks applied, per part.
    filled: Vec<usize>,
    /// A chunk failed to parse or a part's fill panicked: parse no more chunks.
    stop: bool,
}

enum Slot<K, V> {
    Waiting,
    /// Each part's records (taken by its filling thread) and how many in all.
    Parsed {
        parts: Vec<Option<HashedRecords<K, V>>>,
        records: u64,
    },
    Failed(Error),
}

impl<K: Key, V: Value> Pipeline<K, V> {
    fn new(chunks: usize, parts: usize, ahead: usize) -> Self {
        Pipeline {
            state: Mutex::new(State {
                slots: (0..chunks).map(|_| Slot::Waiting).collect(),
                next: 0,
                filled: vec![0; parts],
                stop: false,
            }),
            changed: Condvar::new(),
            ahead: ahead.max(1),
        }
    }

    /// A parsing thread: parses the next chunk, in file order, while the filling threads
    /// are at most `ahead` chunks behind; a chunk it takes, it finishes, so that an error
    /// in it is seen even if a later one stops the load.
    fn parse<T: Table<K, V>>(&self, data: &[u8], chunks: &[(usize, usize)], path: &Path) {
        let parts = self.state.lock().filled.len();
        loop {
            let i = {
                let mut st = self.state.lock();
                loop {
                    if st.stop || st.next >= chunks.len() {
                        return;
                    }
                    let slowest = st.filled.iter().copied().min().unwrap_or(0);
                    if st.next < slowest + self.ahead {
                        break;
                    }
                    self.changed.wait(&mut st);
                }
                st.next += 1;
                st.next - 1
            };
            let slot = match parse_at::<K, V, T>(data, chunks[i], path, parts) {
                Ok(sorted) => Slot::Parsed {
                    records: sorted.len(),
                    parts: sorted.into_parts().into_iter().map(Some).collect(),
                },
                Err(e) => Slot::Failed(e),
            };
            let mut st = self.state.lock();
            st.stop |= matches!(slot, Slot::Failed(_));
            st.slots[i] = slot;
            drop(st);
            self.changed.notify_all();
        }
    }

    /// A filling thread: applies part `p`'s records of each chunk, in file order, as soon
    /// as the chunk is parsed.
    fn fill<T: Table<K, V>>(
        &self,
        p: usize,
        part: &mut Part<'_, K, V, T>,
        chunks: &[(usize, usize)],
    ) {
        for i in 0..chunks.len() {
            let parsed = {
                let mut st = self.state.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if let Slot::Parsed { parts, .. } = &mut st.slots[i] {
                        break parts[p].take().unwrap_or_default();
                    }
                    self.changed.wait(&mut st);
                }
            };
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| part.apply(parsed))) {
                // User code panicked: stop the others, which may wait for this part.
                self.state.lock().stop = true;
                self.changed.notify_all();
                resume_unwind(panic);
            }
            self.state.lock().filled[p] = i + 1;
            self.changed.notify_all();
        }
    }
}

/// The lines of `data`, counted on `threads` threads.
fn count_lines(data: &[u8], threads: usize) -> u64 {
    let step = data.len().div_ceil(threads.max(1)).max(1 << 20);
    if step >= data.len() {
        return codec::count_lines(data);
    }
    std::thread::scope(|s| {
        let counts: Vec<_> = data
            .chunks(step)
            .map(|piece| s.spawn(move || codec::count_lines(piece)))
            .collect();
        // A thread that counts bytes does not panic.
        counts.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    })
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
/// `min` bytes each (a chunk costs more than parsing less).
fn split_lines(data: &[u8], n: usize, min: usize) -> Vec<(usize, usize)> {
    let n = n.clamp(1, (data.len() / min.max(1)).max(1));
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

/// Parses the chunk `start..end` of `data` ([`parse_chunk`]): a panic in user code
/// (`Deserialize`, `Hash`) is an open error all the same, and a bad line's number counts
/// from the file's start.
fn parse_at<K: Key, V: Value, T: Table<K, V>>(
    data: &[u8],
    (start, end): (usize, usize),
    path: &Path,
    parts: usize,
) -> Result<Sorted<K, V>> {
    catch_unwind(AssertUnwindSafe(|| {
        parse_chunk::<K, V, T>(&data[start..end], start, path, parts)
    }))
    .unwrap_or_else(|_| Err(panicked(path)))
    .map_err(|e| renumber(e, codec::count_lines(&data[..start])))
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
            let parts = split_lines(&data, n, 1 << 20);
            assert_eq!(parts.first().map(|p| p.0), Some(0));
            assert_eq!(parts.last().map(|p| p.1), Some(data.len()));
            for w in parts.windows(2) {
                assert_eq!(w[0].1, w[1].0);
                assert_eq!(data[w[0].1 - 1], b'\n');
            }
        }
    }

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::ordered::OrdTable;
    use crate::shard::Shard;

    /// Lines setting and removing keys of a small key space, many times each, with what
    /// reading them in order leaves.
    fn churn(lines: usize) -> (Vec<u8>, HashMap<u64, u64>) {
        let (mut data, mut model) = (Vec::new(), HashMap::new());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..lines as u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % 300;
            if x.is_multiple_of(5) {
                data.extend_from_slice(format!("{{\"key\":{k}}}\n").as_bytes());
                model.remove(&k);
            } else {
                data.extend_from_slice(format!("{{\"key\":{k},\"value\":{i}}}\n").as_bytes());
                model.insert(k, i);
            }
        }
        (data, model)
    }

    fn contents<T: Table<u64, u64>>(map: &Map<u64, u64, T>) -> HashMap<u64, u64> {
        map.copy_all().into_iter().collect()
    }

    /// The map fills from each chunk as soon as it is parsed, a part per thread: with
    /// many small chunks, overwrites and removals of a key spread over all of them, the
    /// last record of each key still wins, whatever the threads and the table.
    #[test]
    fn a_file_in_many_chunks_loads_as_if_read_in_order() -> Result<()> {
        let (data, model) = churn(20_000);
        let path = Path::new("t.db");
        for threads in [1, 2, 3, 8] {
            for min_chunk in [64, 4096, 1 << 20] {
                let (map, records) =
                    load_in::<u64, u64, Shard<u64, u64>>(&data, path, threads, min_chunk)?;
                assert_eq!(records, 20_000);
                assert_eq!(map.len(), model.len(), "{threads} threads, {min_chunk}");
                assert_eq!(contents(&map), model, "{threads} threads, {min_chunk}");
                let (map, _) =
                    load_in::<u64, u64, OrdTable<u64, u64>>(&data, path, threads, min_chunk)?;
                assert_eq!(map.len(), model.len());
                assert_eq!(
                    contents(&map),
                    model,
                    "ordered, {threads} threads, {min_chunk}"
                );
            }
        }
        Ok(())
    }

    /// Of two bad lines in different chunks, the first is reported, with its line number
    /// from the file's start, however the threads run.
    #[test]
    fn the_first_bad_line_of_many_chunks_is_the_one_reported() {
        let (mut data, _) = churn(20_000);
        let starts: Vec<usize> = std::iter::once(0)
            .chain(memchr::memchr_iter(b'\n', &data).map(|i| i + 1))
            .collect();
        for (line, at) in [(19_000, 7), (4_321, 3)] {
            data[starts[line - 1] + at] = b'x';
        }
        for threads in [1, 2, 4] {
            for _ in 0..10 {
                match load_in::<u64, u64, Shard<u64, u64>>(&data, Path::new("t.db"), threads, 256) {
                    Err(Error::Corrupt { line, offset, .. }) => {
                        assert_eq!((line, offset), (4_321, starts[4_320] as u64));
                    }
                    other => panic!(
                        "expected the first bad line, got {:?}",
                        other.map(|(m, n)| (m.len(), n))
                    ),
                }
            }
        }
    }

    static PANICKED: AtomicBool = AtomicBool::new(false);

    /// A value whose `Drop` panics once, for the value 13.
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Touchy(u64);

    impl Drop for Touchy {
        fn drop(&mut self) {
            let first = self.0 == 13 && !PANICKED.swap(true, Ordering::SeqCst);
            assert!(!first, "a replaced value's Drop panicked");
        }
    }

    /// A panic in user code on a filling thread stops the parsing and the other filling
    /// threads (which may be waiting for its part) and fails the open: no hang.
    #[test]
    fn a_panic_while_filling_many_chunks_fails_the_load() {
        let mut data = Vec::new();
        data.extend_from_slice(b"{\"key\":1,\"value\":13}\n");
        for i in 0..20_000u64 {
            data.extend_from_slice(
                format!("{{\"key\":{},\"value\":{i}}}\n", i % 50 + 1).as_bytes(),
            );
        }
        let r = load_in::<u64, Touchy, Shard<u64, Touchy>>(&data, Path::new("t.db"), 4, 128);
        assert!(
            PANICKED.load(Ordering::SeqCst),
            "the value 13 was never replaced"
        );
        match r {
            Err(Error::Internal { .. }) => {}
            other => panic!(
                "expected a failed load, got {:?}",
                other.map(|(m, n)| (m.len(), n))
            ),
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
