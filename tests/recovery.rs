//! Recovery at open, branch by branch: each test writes the exact file set that a crash
//! at some point leaves (or copies a live database's files, which is what a power cut
//! leaves when every synced byte survived), opens it, and checks the state and the files.

mod common;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Result};
use common::{count_bytes, crash_image, TempDir, TestDb};
use ptvp35::Error;
use serde::{Deserialize, Serialize};

type Db = TestDb<u32, String>;

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(bytes)
}

fn side(p: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

/// A live database with 50 acknowledged keys, and a crash image of it at `image`
/// (without preallocated zeros, so that tests can append exact tails).
fn live_with_image(dir: &TempDir, image: &Path) -> Result<Db> {
    let db = ptvp35::Options::new()
        .preallocate(false)
        .open_as(dir.join("live.db"))?;
    for i in 0..50 {
        db.set(i, format!("v{i}"))?;
    }
    crash_image(db.path(), image)?;
    Ok(db)
}

fn check_acked(db: &Db) -> Result<()> {
    for i in 0..50 {
        ensure!(db.get(&i) == Some(format!("v{i}")), "key {i} lost");
    }
    Ok(())
}

#[test]
fn a_torn_tail_after_the_count_is_cut_to_the_error_file() -> Result<()> {
    let dir = TempDir::new("torn")?;
    let image = dir.join("img.db");
    let live = live_with_image(&dir, &image)?;
    let good_len = std::fs::metadata(&image)?.len();
    append(&image, br#"{"key":99,"value":"to"#)?;

    let db = Db::open(&image)?;
    check_acked(&db)?;
    ensure!(db.get(&99).is_none());
    ensure!(
        db.recovery_report().cut == Some(ptvp35::Cut::new(good_len, 21)),
        "{:?}",
        db.recovery_report()
    );
    let error = std::fs::read(side(&image, ".error"))?;
    ensure!(
        error == b"{\"key\":99,\"value\":\"to\n",
        "{:?}",
        String::from_utf8_lossy(&error)
    );
    // The next append starts on a fresh line: the torn bytes are gone from the main file.
    db.set(100, "after".into())?;
    db.close()?;
    let db = Db::open(&image)?;
    ensure!(db.get(&100).as_deref() == Some("after") && db.len() == 51);
    ensure!(db.recovery_report().was_clean());
    db.close()?;
    let names: Vec<String> = dir
        .files()?
        .into_iter()
        .filter(|n| n.starts_with("img"))
        .collect();
    ensure!(names == ["img.db", "img.db.error"], "{names:?}");
    live.close()?;
    Ok(())
}

#[test]
fn a_record_that_parses_but_has_no_checksum_is_not_trusted() -> Result<()> {
    let dir = TempDir::new("stale")?;
    let image = dir.join("img.db");
    let live = live_with_image(&dir, &image)?;
    // Stale bytes from an earlier life of the file, whole and valid JSON.
    append(&image, b"{\"key\":1,\"value\":\"stale\"}\n")?;
    let db = Db::open(&image)?;
    check_acked(&db)?;
    ensure!(db.recovery_report().cut.is_some());
    db.close()?;
    // ...nor one whose checksum was computed over other bytes.
    let last_line = std::fs::read_to_string(dir.join("live.db"))?
        .lines()
        .last()
        .map(str::to_owned)
        .unwrap_or_default();
    ensure!(
        last_line.contains("\"ck\":\""),
        "every batch ends with a checksum: {last_line}"
    );
    let image2 = dir.join("img2.db");
    crash_image(live.path(), &image2)?;
    append(&image2, format!("{last_line}\n").as_bytes())?;
    let db = Db::open(&image2)?;
    ensure!(
        db.recovery_report().cut.is_some(),
        "a replayed batch tail must not pass"
    );
    db.close()?;
    live.close()?;
    Ok(())
}

#[test]
fn zeros_after_the_data_are_dropped_without_an_error_entry() -> Result<()> {
    let dir = TempDir::new("zeros")?;
    let image = dir.join("img.db");
    let live = live_with_image(&dir, &image)?;
    append(&image, &[0u8; 4096])?;
    let db = Db::open(&image)?;
    check_acked(&db)?;
    ensure!(db.recovery_report().cut.is_none() && db.recovery_report().padding == 4096);
    ensure!(
        !side(&image, ".error").exists(),
        "zeros carry nothing to keep"
    );
    db.close()?;
    live.close()?;
    Ok(())
}

#[test]
fn preallocated_zeros_of_a_live_database_are_cut_without_an_error_entry() -> Result<()> {
    let dir = TempDir::new("prealloc")?;
    let db = Db::open(dir.join("live.db"))?;
    for i in 0..50 {
        db.set(i, format!("v{i}"))?;
    }
    let live_len = std::fs::metadata(db.path())?.len();
    ensure!(
        live_len > db.stats().file_len,
        "the live file is preallocated"
    );
    let image = dir.join("img.db");
    crash_image(db.path(), &image)?;
    let img = Db::open(&image)?;
    check_acked(&img)?;
    let report = img.recovery_report();
    ensure!(report.cut.is_none() && report.padding > 0, "{report:?}");
    ensure!(!side(&image, ".error").exists());
    img.close()?;
    ensure!(std::fs::metadata(&image)?.len() < live_len);
    db.close()?;
    ensure!(
        std::fs::metadata(dir.join("live.db"))?.len() == std::fs::metadata(&image)?.len(),
        "a clean close trims the zeros"
    );
    Ok(())
}

/// The zeros a commit writes ahead are flushed by that commit's sync: on a large file
/// they stay at a mebibyte, so no one commit waits for a long flush (a rebuild's first
/// commit after its install used to write an eighth of the file: 18 MiB, 30-80 ms).
#[test]
fn a_commit_preallocates_at_most_a_mebibyte_on_a_large_file() -> Result<()> {
    let dir = TempDir::new("prealloc-large")?;
    let db = Db::open(dir.join("large.db"))?;
    let value = "v".repeat(120);
    db.extend((0..100_000).map(|i| (i, value.clone())))?;
    db.compact()?;
    let data = db.stats().file_len;
    ensure!(
        data > 12 << 20,
        "the file must be large enough: {data} bytes"
    );
    db.set(1, "after the rebuild".into())?;
    let (data, on_disk) = (db.stats().file_len, std::fs::metadata(db.path())?.len());
    ensure!(
        on_disk > data && on_disk - data <= (1 << 20) + 4096,
        "{} bytes preallocated past {data}",
        on_disk.saturating_sub(data)
    );
    db.close()?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

const OLD: &[u8] = b"{\"key\":1,\"value\":\"old\"}\n{\"key\":2,\"value\":\"old\"}\n";
const NEW: &[u8] = b"{\"key\":1,\"value\":\"new\"}\n";

#[test]
fn a_flagged_backup_replaces_the_main_file() -> Result<()> {
    let dir = TempDir::new("restore")?;
    let p = dir.join("r.db");
    write(&p, b"{\"key\":1,\"value\":\"half-writ")?;
    write(&side(&p, ".backup"), NEW)?;
    write(&side(&p, ".recover"), b"")?;
    write(&side(&p, ".truncate"), &count_bytes(10))?;
    write(&side(&p, ".truncate_flag"), b"")?;
    let db = Db::open(&p)?;
    ensure!(db.recovery_report().restored_from_backup);
    ensure!(db.get(&1).as_deref() == Some("new") && db.len() == 1);
    db.close()?;
    ensure!(dir.files()? == ["r.db"], "{:?}", dir.files()?);
    ensure!(std::fs::read(&p)? == NEW);
    Ok(())
}

#[test]
fn a_recover_flag_without_backup_means_the_rename_happened() -> Result<()> {
    let dir = TempDir::new("renamed")?;
    let p = dir.join("r.db");
    write(&p, NEW)?;
    write(&side(&p, ".recover"), b"")?;
    // The marker still describes the old file: it must be ignored, not obeyed.
    write(&side(&p, ".truncate"), &count_bytes(1000))?;
    write(&side(&p, ".truncate_flag"), b"")?;
    let db = Db::open(&p)?;
    ensure!(db.recovery_report().restored_from_backup);
    ensure!(db.get(&1).as_deref() == Some("new"));
    db.close()?;
    ensure!(dir.files()? == ["r.db"], "{:?}", dir.files()?);
    Ok(())
}

#[test]
fn a_backup_without_its_flag_is_discarded() -> Result<()> {
    let dir = TempDir::new("stalebackup")?;
    let p = dir.join("r.db");
    write(&p, OLD)?;
    write(&side(&p, ".backup"), b"{\"key\":1,\"value\":\"incompl")?;
    let db = Db::open(&p)?;
    ensure!(db.recovery_report().discarded_stale_backup);
    ensure!(db.get(&1).as_deref() == Some("old") && db.len() == 2);
    db.close()?;
    ensure!(dir.files()? == ["r.db"], "{:?}", dir.files()?);
    Ok(())
}

#[test]
fn a_marker_without_its_flag_is_ignored() -> Result<()> {
    let dir = TempDir::new("stalemarker")?;
    let p = dir.join("r.db");
    write(&p, OLD)?;
    write(&side(&p, ".truncate"), &count_bytes(0))?;
    let db = Db::open(&p)?;
    ensure!(db.len() == 2 && db.recovery_report().was_clean());
    db.close()?;
    ensure!(dir.files()? == ["r.db"], "{:?}", dir.files()?);
    Ok(())
}

#[test]
fn the_flag_keeps_everything_up_to_the_count() -> Result<()> {
    let dir = TempDir::new("count")?;
    let p = dir.join("r.db");
    let mut data = OLD.to_vec();
    data.extend_from_slice(b"{\"key\":3,\"value\":\"unsynced\"}\n");
    write(&p, &data)?;
    write(&side(&p, ".truncate"), &count_bytes(OLD.len() as u64))?;
    write(&side(&p, ".truncate_flag"), b"")?;
    let db = Db::open(&p)?;
    ensure!(db.len() == 2 && db.get(&3).is_none());
    ensure!(db.recovery_report().cut == Some(ptvp35::Cut::new(OLD.len() as u64, 29)));
    db.close()?;
    ensure!(dir.files()? == ["r.db", "r.db.error"], "{:?}", dir.files()?);
    ensure!(std::fs::read(side(&p, ".error"))? == b"{\"key\":3,\"value\":\"unsynced\"}\n");
    Ok(())
}

#[test]
fn impossible_markers_stop_the_open() -> Result<()> {
    let dir = TempDir::new("badmarker")?;
    let p = dir.join("r.db");
    let cases: [(&str, Option<Vec<u8>>); 4] = [
        ("missing", None),
        ("short", Some(vec![1, 2, 3])),
        ("beyond", Some(count_bytes(10_000).to_vec())),
        ("mid-line", Some(count_bytes(5).to_vec())),
    ];
    for (name, marker) in cases {
        write(&p, OLD)?;
        let _ = std::fs::remove_file(side(&p, ".truncate"));
        if let Some(m) = &marker {
            write(&side(&p, ".truncate"), m)?;
        }
        write(&side(&p, ".truncate_flag"), b"")?;
        match Db::open(&p) {
            Err(Error::BadSideFile { path, reason }) => {
                ensure!(path == side(&p, ".truncate"), "{name}: {path:?}");
                ensure!(!reason.is_empty());
            }
            other => bail!("{name}: expected BadSideFile, got {other:?}"),
        }
        ensure!(
            std::fs::read(&p)? == OLD,
            "{name}: a refused open changes nothing"
        );
    }
    Ok(())
}

#[test]
fn new_and_empty_files_open_empty() -> Result<()> {
    let dir = TempDir::new("empty")?;
    let p = dir.join("new.db");
    let db = Db::open(&p)?;
    ensure!(db.is_empty() && db.recovery_report().created);
    db.close()?;
    ensure!(std::fs::read(&p)?.is_empty());
    write(&p, b"\n\n")?;
    let db = Db::open(&p)?;
    ensure!(db.is_empty() && !db.recovery_report().created);
    db.close()?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
enum SeedKey {
    Tuple(String, String),
    Int(i64),
}

#[test]
fn a_file_written_by_the_python_library_opens() -> Result<()> {
    let dir = TempDir::new("python")?;
    let p = dir.join("py.db");
    // `json.dumps` separators and escapes, CRLF line ends from a Windows editor.
    write(
        &p,
        b"{\"key\": [\"tuple\", \"example\"], \"value\": {\"dict\": \"example\"}}\n\
          {\"key\": 123, \"value\": null}\r\n\
          {\"key\": [\"caf\\u00e9\", \"\\ud83d\\ude00\"], \"value\": [1.5e300, -0.0, \"\\n\"]}\n",
    )?;
    let db = TestDb::<SeedKey, serde_json::Value>::open(&p)?;
    ensure!(
        db.get(&SeedKey::Tuple("tuple".into(), "example".into()))
            == Some(serde_json::json!({"dict": "example"}))
    );
    ensure!(db.get(&SeedKey::Int(123)) == Some(serde_json::Value::Null));
    ensure!(
        db.get(&SeedKey::Tuple("café".into(), "😀".into()))
            == Some(serde_json::json!([1.5e300, -0.0, "\n"]))
    );
    db.close()?;
    Ok(())
}

#[test]
fn a_bad_line_inside_the_valid_region_names_file_line_and_offset() -> Result<()> {
    let dir = TempDir::new("corrupt")?;
    let p = dir.join("c.db");
    let first = b"{\"key\":1,\"value\":\"a\"}\n";
    let mut data = first.to_vec();
    data.extend_from_slice(b"{\"key\":2,\"value\":\"b\"\n");
    data.extend_from_slice(b"{\"key\":3,\"value\":\"c\"}\n");
    for flagged in [false, true] {
        write(&p, &data)?;
        if flagged {
            write(&side(&p, ".truncate"), &count_bytes(data.len() as u64))?;
            write(&side(&p, ".truncate_flag"), b"")?;
        }
        match Db::open(&p) {
            Err(e @ Error::Corrupt { .. }) => {
                let Error::Corrupt {
                    path, line, offset, ..
                } = &e
                else {
                    unreachable!()
                };
                ensure!(
                    path == &p && *line == 2 && *offset == first.len() as u64,
                    "{e:?}"
                );
                let msg = e.to_string();
                ensure!(
                    msg.contains("c.db") && msg.contains("line 2") && msg.contains("offset 22"),
                    "{msg}"
                );
            }
            other => bail!("expected Corrupt, got {other:?}"),
        }
        ensure!(std::fs::read(&p)? == data, "nothing is skipped or cut");
    }
    Ok(())
}

#[test]
fn bad_input_lines_are_refused_not_skipped() -> Result<()> {
    let dir = TempDir::new("badlines")?;
    let p = dir.join("b.db");
    let cases: [&[u8]; 9] = [
        b"\xef\xbb\xbf{\"key\":1,\"value\":\"bom\"}\n",
        b"{\"key\":1,\"value\":\"no newline\"}",
        b"not json\n",
        b"[1,\"x\"]\n",
        b"{\"value\":\"no key\"}\n",
        b"{\"key\":1,\"key\":2,\"value\":\"dup\"}\n",
        b"{\"key\":\"str\",\"value\":\"wrong key type\"}\n",
        b"{\"key\":1,\"value\":\"\xff\"}\n",
        b"{\"key\":1,\"value\":\"nul\x00\"}\n",
    ];
    for case in cases {
        write(&p, case)?;
        match Db::open(&p) {
            Err(Error::Corrupt {
                line: 1, offset: 0, ..
            }) => {}
            other => bail!(
                "{:?}: expected Corrupt at line 1, got {other:?}",
                String::from_utf8_lossy(case)
            ),
        }
    }
    // Deep nesting hits the parser's limit, not the stack.
    let mut deep = b"{\"key\":1,\"value\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.extend_from_slice(b"}\n");
    write(&p, &deep)?;
    let deep_db = TestDb::<u32, serde_json::Value>::open(&p);
    ensure!(matches!(deep_db, Err(Error::Corrupt { .. })), "{deep_db:?}");
    Ok(())
}
