//! Drives the real `ptvp35` binary: every subcommand, its output, its exit codes and its
//! errors.

mod common;

use common::Dir;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{PoisonError, RwLock};

use anyhow::{ensure, Context, Result};
use ptvp35::DbConnection;

/// Runs `ptvp35 args...` with stdout and stderr piped.
fn run(args: &[&str]) -> Result<Run> {
    run_env(args, &[])
}

/// A child process holds a copy of every file this process has open from its fork until
/// its exec, and a copy keeps a database's lock (the lock belongs to the open file, not to
/// the process). So children are spawned under a read guard (`spawn` returns once the
/// child has exec'd, its copies closed), and a database this process closes is closed
/// under the write guard: when that returns, no child holds its lock any more.
static FORK: RwLock<()> = RwLock::new(());

/// Runs `f`, which closes a database this process opened, while no child is being spawned.
fn closing<T>(f: impl FnOnce() -> T) -> T {
    let _guard = FORK.write().unwrap_or_else(PoisonError::into_inner);
    f()
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Result<Run> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ptvp35"));
    cmd.args(args).env_remove("PTVP35_PROGRESS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = {
        let _guard = FORK.read().unwrap_or_else(PoisonError::into_inner);
        cmd.spawn().context("running ptvp35")?
    };
    let out: Output = child.wait_with_output().context("running ptvp35")?;
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    };
    // No user mistake or failure may end in a panic or a backtrace.
    ensure!(
        !r.stderr.contains("panicked") && !r.stderr.contains("backtrace"),
        "{args:?}: {}",
        r.stderr
    );
    Ok(r)
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn expect(self, code: i32) -> Result<Self> {
        ensure!(
            self.code == code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn side(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

#[test]
fn help_lists_every_subcommand_and_the_exit_codes() -> Result<()> {
    let top = run(&["--help"])?.expect(0)?;
    for sub in [
        "check", "recover", "dump", "get", "set", "rm", "compact", "repair", "stats", "backup",
        "tail", "apply",
    ] {
        ensure!(top.stdout.contains(sub), "{sub} missing from --help");
        let h = run(&[sub, "--help"])?.expect(0)?;
        ensure!(
            h.stdout.contains("Examples:"),
            "{sub} --help has no examples"
        );
    }
    ensure!(top.stdout.contains("Exit codes:") && top.stdout.contains("64"));
    let check = run(&["check", "--help"])?.expect(0)?;
    ensure!(check.stdout.contains("1  recovery needed") && check.stdout.contains("2  corrupt"));
    let dump = run(&["dump", "--help"])?.expect(0)?;
    ensure!(
        dump.stdout.contains("key order") && !dump.stdout.contains("no particular order"),
        "dump --help does not state the order"
    );
    let bad = run(&["frobnicate"])?.expect(64)?;
    ensure!(bad.stderr.contains("unrecognized subcommand"));
    run(&["get"])?.expect(64)?;
    Ok(())
}

#[test]
fn set_get_rm_take_json_and_bare_words() -> Result<()> {
    let d = Dir::new("setget")?;
    let db = d.join("d.db");
    let f = s(&db);
    run(&["set", f, "alice", "100"])?.expect(0)?;
    run(&[
        "set",
        f,
        "[\"tuple\", 1]",
        "{\"dict\": \"example\", \"n\": [1, 2.5]}",
    ])?
    .expect(0)?;
    run(&["set", f, "note", "hello world"])?.expect(0)?;
    ensure!(run(&["get", f, "alice"])?.expect(0)?.stdout == "100\n");
    ensure!(run(&["get", f, "\"alice\""])?.expect(0)?.stdout == "100\n");
    let t = run(&["get", f, "[\"tuple\",1]"])?.expect(0)?;
    ensure!(
        t.stdout == "{\"dict\":\"example\",\"n\":[1,2.5]}\n",
        "{}",
        t.stdout
    );
    ensure!(run(&["get", f, "note"])?.expect(0)?.stdout == "\"hello world\"\n");

    // What the tool wrote, the library reads with typed keys and values.
    {
        let typed = closing(|| DbConnection::<String, serde_json::Value>::open(&db));
        ensure!(typed.is_err(), "a tuple key is not a String key");
    }
    let missing = run(&["get", f, "bob"])?.expect(1)?;
    ensure!(missing.stderr.contains("no key \"bob\"") && missing.stderr.contains(f));
    run(&["rm", f, "alice"])?.expect(0)?;
    run(&["get", f, "alice"])?.expect(1)?;
    let again = run(&["rm", f, "alice"])?.expect(1)?;
    ensure!(again.stderr.contains("no key \"alice\""));

    let bad = run(&["set", f, "k", "{\"open\": "])?.expect(64)?;
    ensure!(bad.stderr.contains("VALUE") && bad.stderr.contains("not valid JSON"));
    let bad = run(&["get", f, "[1, 2"])?.expect(64)?;
    ensure!(bad.stderr.contains("KEY"));
    // A value typed over several lines is stored on one.
    run(&["set", f, "multi", "{\"a\":\n 1}"])?.expect(0)?;
    ensure!(run(&["get", f, "multi"])?.stdout == "{\"a\":1}\n");
    run(&["check", f])?.expect(0)?;
    Ok(())
}

#[test]
fn commands_that_read_refuse_a_missing_database() -> Result<()> {
    let d = Dir::new("missing")?;
    let db = d.join("none.db");
    for args in [
        vec!["check", s(&db)],
        vec!["recover", s(&db)],
        vec!["dump", s(&db)],
        vec!["get", s(&db), "k"],
        vec!["rm", s(&db), "k"],
        vec!["compact", s(&db)],
        vec!["repair", s(&db), "--yes"],
        vec!["stats", s(&db)],
    ] {
        let r = run(&args)?.expect(3)?;
        ensure!(
            r.stderr.contains("no database at") && r.stderr.contains(s(&db)),
            "{args:?}: {}",
            r.stderr
        );
    }
    ensure!(!db.exists(), "a read command created the database");
    Ok(())
}

#[test]
fn a_locked_database_names_the_lock() -> Result<()> {
    let d = Dir::new("locked")?;
    let path = d.join("l.db");
    let db = DbConnection::<String, i64>::open(&path)?;
    db.set("a".into(), 1)?;
    let f = s(&path);
    // check, dump, get and stats only read: they work beside the owner (cli/tests/readers.rs).
    for args in [
        vec!["recover", f],
        vec!["set", f, "a", "2"],
        vec!["rm", f, "a"],
        vec!["compact", f],
        vec!["repair", f, "--yes"],
    ] {
        let r = run(&args)?.expect(3)?;
        ensure!(
            r.stderr.contains("is locked") && r.stderr.contains(f),
            "{args:?}: {}",
            r.stderr
        );
    }
    ensure!(db.get("a") == Some(1));
    closing(|| db.close())?;
    Ok(())
}

/// A database of `n` records of 10 keys written by the library, closed cleanly. Each
/// record is its own batch (`set` waits), so the file's bytes do not depend on how the
/// writer happened to group them.
fn library_db(path: &Path, n: u32) -> Result<()> {
    let db = ptvp35::Options::new()
        .preallocate(false)
        .open::<String, u32>(path)?;
    for i in 0..n {
        db.set(format!("k{}", i % 10), i)?;
    }
    closing(|| db.close())?;
    Ok(())
}

#[test]
fn check_exits_0_clean_1_recovery_needed_2_corrupt() -> Result<()> {
    let d = Dir::new("check")?;
    let path = d.join("c.db");
    library_db(&path, 30)?;
    let f = s(&path);
    let clean = run(&["check", f])?.expect(0)?;
    ensure!(clean.stdout.contains("clean"));
    ensure!(clean.stdout.contains("30 (10 live keys, 20 dead records)"));

    // A crash image: the flag, its count, and a torn unacknowledged tail.
    let len = std::fs::metadata(&path)?.len();
    std::fs::write(side(&path, ".truncate"), u128::from(len).to_le_bytes())?;
    std::fs::write(side(&path, ".truncate_flag"), b"")?;
    let mut data = std::fs::read(&path)?;
    data.extend_from_slice(b"{\"key\":\"k1\",\"value\":9");
    std::fs::write(&path, &data)?;
    let before = data.clone();
    let r = run(&["check", f])?.expect(1)?;
    ensure!(r.stdout.contains("recovery needed"), "{}", r.stdout);
    ensure!(
        r.stdout
            .contains(&format!("cut 21 bytes from offset {len}")),
        "{}",
        r.stdout
    );
    ensure!(r.stdout.contains(".truncate_flag"));
    ensure!(std::fs::read(&path)? == before, "check changed the file");
    ensure!(
        !side(&path, ".error").exists(),
        "check wrote the error file"
    );

    let rec = run(&["recover", f])?.expect(0)?;
    ensure!(rec
        .stdout
        .contains(&format!("cut 21 bytes from offset {len}")));
    ensure!(rec.stdout.contains("10 live keys"));
    ensure!(std::fs::read(side(&path, ".error"))? == b"{\"key\":\"k1\",\"value\":9\n");
    run(&["check", f])?.expect(0)?;

    // A bad line inside the valid region: corrupt, with line and offset.
    let mut data = std::fs::read(&path)?;
    let offset = data.len();
    data.extend_from_slice(b"{\"key\":\"x\",\"value\":NaN}\n");
    std::fs::write(&path, &data)?;
    let r = run(&["check", f])?.expect(2)?;
    ensure!(
        r.stdout
            .contains(&format!("line 31 at byte offset {offset}")),
        "{}",
        r.stdout
    );
    // Every command that opens it says the same, with exit 2 and a hint.
    let g = run(&["get", f, "k1"])?.expect(2)?;
    ensure!(g.stderr.contains("line 31") && g.stderr.contains("ptvp35 repair"));
    run(&["recover", f])?.expect(2)?;
    Ok(())
}

#[test]
fn dump_streams_ndjson_and_json() -> Result<()> {
    let d = Dir::new("dump")?;
    let path = d.join("d.db");
    library_db(&path, 25)?;
    let f = s(&path);
    let nd = run(&["dump", f])?.expect(0)?;
    let mut seen = Vec::new();
    for line in nd.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        seen.push((
            v["key"].as_str().unwrap_or("").to_owned(),
            v["value"].clone(),
        ));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    ensure!(seen.len() == 10);
    ensure!(seen[0] == ("k0".to_owned(), serde_json::json!(20)));
    ensure!(seen[9] == ("k9".to_owned(), serde_json::json!(19)));

    let js = run(&["dump", f, "--format", "json"])?.expect(0)?;
    let arr: Vec<serde_json::Value> = serde_json::from_str(&js.stdout)?;
    ensure!(arr.len() == 10);
    ensure!(arr.iter().any(|o| o["key"] == "k5" && o["value"] == 15));

    let empty = d.join("e.db");
    run(&["set", s(&empty), "a", "1"])?.expect(0)?;
    run(&["rm", s(&empty), "a"])?.expect(0)?;
    ensure!(run(&["dump", s(&empty)])?.expect(0)?.stdout.is_empty());
    let arr: Vec<serde_json::Value> =
        serde_json::from_str(&run(&["dump", s(&empty), "--format", "json"])?.stdout)?;
    ensure!(arr.is_empty());
    run(&["dump", f, "--format", "xml"])?.expect(64)?;
    Ok(())
}

#[test]
fn compact_shrinks_the_file_quietly_when_piped() -> Result<()> {
    let d = Dir::new("compact")?;
    let path = d.join("c.db");
    library_db(&path, 2000)?;
    let f = s(&path);
    let before = std::fs::metadata(&path)?.len();
    let r = run(&["compact", f])?.expect(0)?;
    let after = std::fs::metadata(&path)?.len();
    ensure!(after < before / 50, "{before} -> {after}");
    ensure!(r
        .stdout
        .contains(&format!("from {before} to {after} bytes")));
    ensure!(
        r.stderr.is_empty(),
        "progress drawn on a pipe: {:?}",
        r.stderr
    );
    for sfx in [".backup", ".recover", ".truncate", ".truncate_flag"] {
        ensure!(!side(&path, sfx).exists(), "{sfx} left behind");
    }
    ensure!(run(&["get", f, "k3"])?.expect(0)?.stdout == "1993\n");

    // Forced on, the bar ends full.
    library_db(&path, 500)?;
    let r = run_env(&["compact", f], &[("PTVP35_PROGRESS", "always")])?.expect(0)?;
    ensure!(
        r.stderr.contains("100%") && r.stderr.contains("compact"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn repair_refuses_without_yes_then_moves_bad_lines() -> Result<()> {
    let d = Dir::new("repair")?;
    let path = d.join("r.db");
    let f = s(&path);
    std::fs::write(
        &path,
        "{\"key\": \"a\", \"value\": 1}\n{\"key\": \"b\", \"value\": Infinity}\n\
         {\"key\": \"c\", \"value\": 3}\n",
    )?;
    let before = std::fs::read(&path)?;
    let dry = run(&["repair", f])?.expect(1)?;
    ensure!(dry.stdout.contains("repair would"), "{}", dry.stdout);
    ensure!(
        dry.stdout.contains("line 2 at byte offset 25"),
        "{}",
        dry.stdout
    );
    ensure!(dry.stdout.contains("nothing was changed") && dry.stdout.contains("--yes"));
    ensure!(std::fs::read(&path)? == before && !side(&path, ".error").exists());

    let done = run(&["repair", f, "--yes"])?.expect(0)?;
    ensure!(done.stdout.contains("moved 1 lines"), "{}", done.stdout);
    let err = std::fs::read_to_string(side(&path, ".error"))?;
    ensure!(err.starts_with("# ptvp35 repair: line 2 at byte offset 25: "));
    ensure!(err.ends_with("{\"key\": \"b\", \"value\": Infinity}\n"));
    run(&["check", f])?.expect(0)?;
    ensure!(run(&["get", f, "c"])?.expect(0)?.stdout == "3\n");
    let nothing = run(&["repair", f])?.expect(0)?;
    ensure!(nothing.stdout.contains("nothing to repair"));

    // A side file no crash explains: repair refuses, as recovery does.
    std::fs::write(side(&path, ".truncate_flag"), b"")?;
    let r = run(&["repair", f, "--yes"])?.expect(2)?;
    ensure!(r.stderr.contains(".truncate"), "{}", r.stderr);
    Ok(())
}

#[test]
fn stats_reports_sizes_counts_and_the_live_ratio() -> Result<()> {
    let d = Dir::new("stats")?;
    let path = d.join("s.db");
    library_db(&path, 40)?;
    let r = run(&["stats", s(&path)])?.expect(0)?;
    let len = std::fs::metadata(&path)?.len();
    ensure!(r.stdout.contains(&format!("{len} bytes")), "{}", r.stdout);
    ensure!(r.stdout.contains("40 (10 live keys, 30 dead records)"));
    ensure!(r.stdout.contains("% of record bytes live"));
    ensure!(r.stdout.contains("live/dead bytes: 0.3"), "{}", r.stdout);
    Ok(())
}

/// Issue 9, item 17: `repair --yes` on a file that is not a database moved every line to
/// `.error` and left it empty.
#[test]
fn repair_refuses_a_file_that_is_not_a_database() -> Result<()> {
    let d = Dir::new("notadb")?;
    let path = d.join("passwd");
    let f = s(&path);
    let text = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                {\"not\": \"a record\"}\n";
    std::fs::write(&path, text)?;
    for args in [vec!["repair", f, "--yes"], vec!["repair", f]] {
        let r = run(&args)?.expect(2)?;
        ensure!(
            r.stderr.contains("not a database") && r.stderr.contains(f),
            "{args:?}: {}",
            r.stderr
        );
        ensure!(
            !r.stderr.contains("repair moves") && !r.stdout.contains("repairing"),
            "{args:?}: {}{}",
            r.stdout,
            r.stderr
        );
        ensure!(
            std::fs::read_to_string(&path)? == text,
            "{args:?} changed it"
        );
        ensure!(!side(&path, ".error").exists(), "{args:?} wrote .error");
    }
    let c = run(&["check", f])?.expect(2)?;
    ensure!(c.stdout.contains("not a database"), "{}", c.stdout);
    Ok(())
}

/// `n` nested arrays: `[[...]]`.
fn nested(n: usize) -> String {
    "[".repeat(n) + &"]".repeat(n)
}

/// Issue 9, item 16: `set f.db b 1e400` stored a number no typed program reads, and
/// `check` called the file clean; the same for a value nested past the reader's limit.
#[test]
fn set_refuses_and_check_reports_what_would_not_read_back() -> Result<()> {
    let d = Dir::new("readback")?;
    let path = d.join("f.db");
    let f = s(&path);
    run(&["set", f, "a", "1"])?.expect(0)?;
    let before = std::fs::read(&path)?;
    // The record's own object is one level, so a value nests at most 126.
    let (deepest, too_deep) = (nested(126), nested(127));
    for (value, why) in [
        ("1e400", "out of range"),
        ("-1e400", "out of range"),
        ("[1, 1e309]", "out of range"),
        ("{\"x\": 1, \"x\": 2}", "appears twice"),
        (too_deep.as_str(), "recursion limit"),
    ] {
        let r = run(&["set", "--", f, "b", value])?.expect(64)?;
        ensure!(
            r.stderr.contains("would not read back") && r.stderr.contains(why),
            "{value}: {}",
            r.stderr
        );
        ensure!(std::fs::read(&path)? == before, "{value} was stored");
    }
    let r = run(&["set", f, &too_deep, "1"])?.expect(64)?;
    ensure!(r.stderr.contains("KEY"), "{}", r.stderr);
    run(&["set", f, "deep", &deepest])?.expect(0)?;
    run(&["set", f, "big", "18446744073709551616"])?.expect(0)?;
    run(&["check", f])?.expect(0)?;
    // What the tool wrote, a typed program reads.
    {
        let db = DbConnection::<String, serde_json::Value>::open(&path)?;
        ensure!(db.len() == 3);
        closing(|| db.close())?;
    }

    // Lines another program wrote: check reports each, repair moves them.
    let mut data = std::fs::read(&path)?;
    let at = data.len();
    data.extend_from_slice(b"{\"key\": \"n\", \"value\": 1e400}\n");
    data.extend_from_slice(format!("{{\"key\":\"d\",\"value\":{too_deep}}}\n").as_bytes());
    data.extend_from_slice(format!("{{\"key\":{too_deep},\"value\":1}}\n").as_bytes());
    std::fs::write(&path, &data)?;
    let c = run(&["check", f])?.expect(2)?;
    ensure!(
        c.stdout.contains(&format!("line 4 at byte offset {at}"))
            && c.stdout.contains("out of range")
            && c.stdout.contains("line 5")
            && c.stdout.contains("line 6")
            && c.stdout.contains("recursion limit"),
        "{}",
        c.stdout
    );
    ensure!(closing(|| DbConnection::<String, serde_json::Value>::open(&path)).is_err());
    run(&["repair", f, "--yes"])?.expect(0)?;
    run(&["check", f])?.expect(0)?;
    let db = DbConnection::<String, serde_json::Value>::open(&path)?;
    ensure!(db.len() == 3);
    closing(|| db.close())?;
    Ok(())
}
