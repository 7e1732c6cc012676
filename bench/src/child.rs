//! The hidden `__child` subcommand: one store's bulk load or reopen in a process of its
//! own, so that its time and memory are its own. Prints one `RESULT {json}` line.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use redb::ReadableDatabase;
use serde::de::DeserializeOwned;

use crate::data::{key, proc_kib, tree_size, val, Record};
use crate::stores::{self, Kind};

pub fn main(args: &[String]) -> Result<()> {
    let kind_of = |s: &str| Kind::from_id(s).with_context(|| format!("unknown store {s}"));
    match args {
        [what, kind, dir, n] if what == "bulk" => bulk(
            kind_of(kind)?,
            Path::new(dir),
            n.parse().context("key count")?,
        ),
        [what, dir] if what == "rebuild" => rebuild(Path::new(dir)),
        [what, kind, dir, values, threads] if what == "reopen" => {
            let (kind, dir) = (kind_of(kind)?, Path::new(dir));
            let threads = threads.parse().context("threads")?;
            let (secs, rss_kib) = match values.as_str() {
                "typed" => reopen::<crate::data::Val>(kind, dir, threads)?,
                "value" => reopen::<serde_json::Value>(kind, dir, threads)?,
                v => bail!("unknown value kind {v}"),
            };
            println!("RESULT {{\"secs\":{secs},\"rss_kib\":{rss_kib}}}");
            Ok(())
        }
        _ => bail!("bad child arguments {args:?}"),
    }
}

fn bulk(kind: Kind, dir: &Path, n: u64) -> Result<()> {
    let mut s = stores::open(kind, dir)?;
    let mut items = (0..n).map(|i| (key(i), val(i, 0)));
    let t = Instant::now();
    s.load(&mut items)?;
    let secs = t.elapsed().as_secs_f64();
    s.close()?;
    let hwm = proc_kib("VmHWM");
    let bytes = tree_size(dir);
    std::fs::write(dir.join(".complete"), b"")?;
    println!("RESULT {{\"secs\":{secs},\"bytes\":{bytes},\"hwm_kib\":{hwm}}}");
    Ok(())
}

/// Open the ptvp35 database in `dir`, rebuild it once; report the rebuild's time and the
/// peak RSS of the whole process (open included).
fn rebuild(dir: &Path) -> Result<()> {
    let db = ptvp35::DbConnection::<String, crate::data::Val>::open(crate::engine::path(dir))?;
    let t = Instant::now();
    db.compact()?;
    let secs = t.elapsed().as_secs_f64();
    let hwm = proc_kib("VmHWM");
    let stats = db.stats();
    let (lock, install) = (
        stats.rebuild_longest_lock.as_secs_f64(),
        stats.rebuild_install.as_secs_f64(),
    );
    db.close()?;
    println!(
        "RESULT {{\"secs\":{secs},\"hwm_kib\":{hwm},\"lock_secs\":{lock},\"install_secs\":{install}}}"
    );
    Ok(())
}

/// Open the database `kind` left in `dir`, read key 0, return (seconds, VmRSS in KiB)
/// with everything the store opened still alive.
fn reopen<V>(kind: Kind, dir: &Path, threads: usize) -> Result<(f64, u64)>
where
    V: DeserializeOwned + serde::Serialize + Clone + Send + Sync + 'static,
{
    let k0 = key(0);
    let t = Instant::now();
    let done = |found: bool| -> Result<(f64, u64)> {
        let secs = t.elapsed().as_secs_f64();
        if !found {
            bail!("first key not found");
        }
        Ok((secs, proc_kib("VmRSS")))
    };
    match kind {
        Kind::Ptvp35 => {
            let db = ptvp35::DbConnection::<String, V>::open(crate::engine::path(dir))?;
            let r = done(db.get(&k0).is_some());
            black_box(&db);
            r
        }
        Kind::Redb => {
            let db = redb::Database::open(stores::redb_path(dir))?;
            let rt = db.begin_read()?;
            let tab = rt.open_table(redb::TableDefinition::<&str, &[u8]>::new("kv"))?;
            let v: Option<V> = match tab.get(k0.as_str())? {
                Some(g) => Some(serde_json::from_slice(g.value())?),
                None => None,
            };
            let r = done(v.is_some());
            black_box((&db, &rt, &tab));
            r
        }
        Kind::Sled => {
            let db = sled::open(stores::sled_path(dir))?;
            let v: Option<V> = match db.get(k0.as_bytes())? {
                Some(b) => Some(serde_json::from_slice(&b)?),
                None => None,
            };
            let r = done(v.is_some());
            black_box(&db);
            r
        }
        Kind::Sqlite => {
            let c = stores::sqlite_conn(&stores::sqlite_path(dir))?;
            let b: Vec<u8> = c.query_row("SELECT v FROM kv WHERE k = ?1", [&k0], |r| r.get(0))?;
            let v: V = serde_json::from_slice(&b)?;
            let r = done(true);
            black_box((&c, &v));
            r
        }
        Kind::Pickledb | Kind::PickledbFsync => {
            let db = pickledb::PickleDb::load(
                stores::pickle_path(dir),
                pickledb::PickleDbDumpPolicy::DumpUponRequest,
                pickledb::SerializationMethod::Json,
            )?;
            let r = done(db.get::<V>(&k0).is_some());
            black_box(&db);
            r
        }
        Kind::Rustbreak => {
            let db = rustbreak::FileDatabase::<HashMap<String, V>, rustbreak::deser::Ron>::load_from_path(
                stores::rustbreak_path(dir),
            )?;
            let found = db.read(|m| m.get(&k0).cloned())?.is_some();
            let r = done(found);
            black_box(&db);
            r
        }
        Kind::Ndjson => {
            let map = parse_ndjson::<V>(&stores::ndjson_path(dir), threads)?;
            let r = done(map.contains_key(&k0));
            black_box(&map);
            r
        }
        k => bail!("{} cannot be reopened", k.id()),
    }
}

/// The parse limit: the NDJSON file into a typed `HashMap`, on `threads` threads (the
/// file split at line boundaries, each part parsed into a vector, then one map built).
fn parse_ndjson<V>(path: &Path, threads: usize) -> Result<HashMap<String, V>>
where
    V: DeserializeOwned + Send,
{
    let bytes = std::fs::read(path)?;
    let threads = threads.max(1);
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest: &[u8] = &bytes;
    for i in (1..=threads).rev() {
        if i == 1 {
            parts.push(rest);
            break;
        }
        let at = rest.len() / i;
        let cut = rest[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| at + p + 1);
        let (a, b) = rest.split_at(cut);
        parts.push(a);
        rest = b;
    }
    fn parse<V: DeserializeOwned>(part: &[u8]) -> Result<Vec<(String, V)>> {
        part.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let r: Record<V> = serde_json::from_slice(l)?;
                Ok((r.key, r.value))
            })
            .collect()
    }
    let mut map = HashMap::new();
    if threads == 1 {
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let r: Record<V> = serde_json::from_slice(line)?;
            map.insert(r.key, r.value);
        }
        return Ok(map);
    }
    let vecs: Vec<Vec<(String, V)>> = std::thread::scope(|s| {
        let hs: Vec<_> = parts.iter().map(|p| s.spawn(|| parse::<V>(p))).collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("parser panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    map.reserve(vecs.iter().map(Vec::len).sum());
    for v in vecs {
        map.extend(v);
    }
    Ok(map)
}
