//! The tool beside a running owner: `check`, `dump`, `get`, `stats` and `backup` read a
//! database this test process holds open (the tool is another process); `tail --follow`
//! sees commits and a rebuild; writes wait with `--wait`; values come from stdin or a file.

mod common;

use common::Dir;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ptvp35::DbConnection;

type Db = DbConnection<String, i64>;

fn tool(args: &[&str], stdin: &[u8]) -> Result<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptvp35"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

fn ok(args: &[&str]) -> Result<String> {
    let out = tool(args, b"")?;
    ensure!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

#[test]
fn read_commands_work_on_a_database_another_process_has_open() -> Result<()> {
    let d = Dir::new("ro")?;
    let path = d.0.join("d.db");
    let f = s(&path);
    let db = Db::open(&path)?;
    for i in 0..50 {
        db.set(format!("k{i}"), i)?;
    }
    ensure!(ok(&["check", f])?.contains("in use"));
    ensure!(ok(&["stats", f])?.contains("50 live keys"));
    ensure!(ok(&["get", f, "k7"])?.trim() == "7");
    let dump = ok(&["dump", f])?;
    ensure!(dump.lines().count() == 50, "{dump}");
    let copy = d.0.join("copy.db");
    ok(&["backup", f, s(&copy)])?;
    ensure!(Db::open(&copy)?.len() == 50);
    // Nothing of the owner's was touched: its next write and close go on as ever.
    db.set("after".into(), 1)?;
    ensure!(ok(&["get", f, "after"])?.trim() == "1");

    // A write waits for the lock, then gives up with "locked"...
    let t = Instant::now();
    let out = tool(&["set", f, "w", "1", "--wait", "0.3"], b"")?;
    ensure!(out.status.code() == Some(3) && t.elapsed() >= Duration::from_millis(300));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("is locked"), "{stderr}");
    if std::path::Path::new("/proc/locks").exists() {
        let me = format!("process {} (", std::process::id());
        ensure!(
            stderr.contains(&me),
            "the hint does not name {me}: {stderr}"
        );
    }
    // ...or gets it once the owner lets go.
    let owner = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        db.close()
    });
    let out = tool(
        &["set", f, "w", "-", "--wait", "20"],
        b"{\"from\": \"stdin\"}\n",
    )?;
    owner
        .join()
        .map_err(|_| anyhow::anyhow!("owner panicked"))??;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value_file = d.0.join("value.json");
    std::fs::write(&value_file, "[1, 2, 3]\n")?;
    ok(&["set", f, "v", &format!("@{}", s(&value_file))])?;
    let db = DbConnection::<String, serde_json::Value>::open(&path)?;
    ensure!(db.get("w") == Some(serde_json::json!({"from": "stdin"})));
    ensure!(db.get("v") == Some(serde_json::json!([1, 2, 3])));
    db.close()?;
    Ok(())
}

#[test]
fn tail_follow_sees_commits_and_a_rebuild() -> Result<()> {
    let d = Dir::new("tail")?;
    let path = d.0.join("d.db");
    let db = Db::open(&path)?;
    db.set("first".into(), 1)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptvp35"))
        .args([
            "tail",
            s(&path),
            "--follow",
            "--interval",
            "0.02",
            "--stop-after",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Waits for `want`; returns the lines printed before it.
    let wait_for = |want: &str| -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .with_context(|| format!("no {want} from tail"))?;
            if line == want {
                return Ok(before);
            }
            before.push(line);
        }
    };
    let r = (|| -> Result<()> {
        wait_for(r#"{"key":"first","value":1}"#)?;
        db.set("second".into(), 2)?;
        wait_for(r#"{"key":"second","value":2}"#)?;
        db.remove("first")?;
        wait_for(r#"{"key":"first"}"#)?;
        db.compact()?;
        db.set("third".into(), 3)?;
        let between = wait_for(r#"{"key":"third","value":3}"#)?;
        ensure!(between.is_empty(), "a rebuild alone printed {between:?}");
        db.set("fourth".into(), 4)?;
        wait_for(r#"{"key":"fourth","value":4}"#).map(drop)
    })();
    let _ = child.kill();
    let _ = child.wait();
    db.close()?;
    r
}

fn side(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

/// What a read-only handle shows, as `dump` prints it (keys of these tests are strings,
/// which `dump` orders by their bytes).
fn shown(path: &Path) -> Result<String> {
    let db: Db = ptvp35::Options::new().read_only(true).open(path)?;
    let mut all = Vec::new();
    db.for_each(|k, v| all.push((k.clone(), *v)));
    all.sort();
    let mut out = String::new();
    for (k, v) in &all {
        writeln!(
            out,
            "{{\"key\":{},\"value\":{v}}}",
            serde_json::to_string(k)?
        )?;
    }
    Ok(out)
}

/// `get` and `dump` stream the file but must show exactly what a read-only open shows: a
/// pending restore from the backup, a torn tail and preallocated zeros under the owner's
/// session flag, and a database its owner has open.
#[test]
fn get_and_dump_show_the_state_a_read_only_open_shows() -> Result<()> {
    let d = Dir::new("states")?;
    // An owner with a session open: its files are a crash image when copied.
    let live = d.0.join("live.db");
    let db = Db::open(&live)?;
    for i in 0..20 {
        db.set(format!("k{i:02}"), i)?;
    }
    db.remove("k03")?;
    let f = s(&live);
    ensure!(ok(&["dump", f])? == shown(&live)?);
    ensure!(ok(&["get", f, "k07"])?.trim() == "7");
    ensure!(tool(&["get", f, "k03"], b"")?.status.code() == Some(1));

    // The crash image, with a torn batch and zeros after the vouched-for bytes.
    let torn = d.0.join("torn.db");
    let mut data = std::fs::read(&live)?;
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    data.truncate(end);
    data.extend_from_slice(b"{\"key\":\"k07\",\"value\":700}\n{\"key\":\"k08\",\"val");
    data.extend_from_slice(&[0; 4096]);
    std::fs::write(&torn, &data)?;
    for suffix in [".truncate", ".truncate_flag"] {
        std::fs::copy(side(&live, suffix), side(&torn, suffix))?;
    }
    let t = s(&torn);
    ensure!(ok(&["dump", t])? == shown(&torn)?);
    ensure!(
        ok(&["get", t, "k07"])?.trim() == "7",
        "an unvouched line counted"
    );
    db.close()?;

    // A rebuild's copy flagged complete: the state is the backup's, not P's.
    let restore = d.0.join("restore.db");
    std::fs::write(&restore, "{\"key\":\"old\",\"value\":1}\n")?;
    std::fs::write(
        side(&restore, ".backup"),
        "{\"key\":\"new\",\"value\":2}\n{\"key\":\"b\",\"value\":3}\n",
    )?;
    std::fs::write(side(&restore, ".recover"), b"")?;
    let r = s(&restore);
    ensure!(ok(&["dump", r])? == "{\"key\":\"b\",\"value\":3}\n{\"key\":\"new\",\"value\":2}\n");
    ensure!(ok(&["dump", r])? == shown(&restore)?);
    ensure!(ok(&["get", r, "new"])?.trim() == "2");
    ensure!(tool(&["get", r, "old"], b"")?.status.code() == Some(1));
    // Nothing was changed: recovery did not run.
    ensure!(side(&restore, ".recover").exists() && side(&torn, ".truncate_flag").exists());
    ensure!(std::fs::read(&torn)? == data);
    Ok(())
}

/// `dump` prints keys in the documented order, the same bytes whatever order they were
/// written in.
#[test]
fn dump_prints_keys_of_every_type_in_key_order() -> Result<()> {
    let d = Dir::new("order")?;
    let keys = [
        "null",
        "false",
        "true",
        "-2",
        "0",
        "1",
        "1.0",
        "2",
        "10",
        "1e2",
        "18446744073709551616",
        "\"\"",
        "\"B\"",
        "\"a\"",
        "\"\\u00e9\"",
        "[]",
        "[1]",
        "[1,2]",
        "[2]",
        "{}",
        "{\"a\":1}",
        "{\"b\":0}",
    ];
    let mut want = String::new();
    for k in keys {
        writeln!(want, "{{\"key\":{k},\"value\":0}}")?;
    }
    let mut dumps = Vec::new();
    for (n, order) in [[0usize, 1], [1, 0]].iter().enumerate() {
        let path = d.0.join(format!("o{n}.db"));
        let mut text = String::new();
        for half in order {
            for k in keys.iter().skip(*half).step_by(2).rev() {
                writeln!(text, "{{\"key\": {k}, \"value\": 0}}")?;
            }
        }
        std::fs::write(&path, text)?;
        dumps.push(ok(&["dump", s(&path)])?);
    }
    ensure!(dumps[0] == want, "{}", dumps[0]);
    ensure!(dumps[1] == want, "{}", dumps[1]);
    Ok(())
}

/// The six files' bytes (`None` for one that is absent).
fn six(path: &Path) -> Vec<Option<Vec<u8>>> {
    let mut all = vec![std::fs::read(path).ok()];
    for suffix in [
        ".backup",
        ".recover",
        ".truncate",
        ".truncate_flag",
        ".error",
    ] {
        all.push(std::fs::read(side(path, suffix)).ok());
    }
    all
}

/// `check` and `stats` on a database in use give the whole report (files, records,
/// live and dead, what recovery would do) without the lock, without changing a file,
/// with read permission only; the owner's open session is not "recovery needed".
#[test]
fn check_and_stats_report_fully_on_a_database_in_use() -> Result<()> {
    let d = Dir::new("inuse")?;
    let path = d.0.join("d.db");
    let f = s(&path);
    let db = Db::open(&path)?;
    for i in 0..30 {
        db.set(format!("k{i}"), i)?;
    }
    for i in 0..10 {
        db.set(format!("k{i}"), -i)?;
    }
    db.remove("k29")?;
    let before = six(&path);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))?;
    }
    let out = tool(&["check", f], b"")?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(out.status.code() == Some(0), "{text}");
    ensure!(text.starts_with(&format!("{f}: in use by ")), "{text}");
    ensure!(text.contains(", consistent"), "{text}");
    if Path::new("/proc/locks").exists() {
        let me = format!("in use by process {} (", std::process::id());
        ensure!(text.contains(&me), "{text}");
    }
    for want in [
        "files:",
        ".truncate_flag",
        "the owner's open session:",
        "if the owner stopped now without closing, recovery would",
        "records: 41 (29 live keys, 12 dead records)",
        "bytes: ",
    ] {
        ensure!(text.contains(want), "no {want:?} in\n{text}");
    }
    let stats = ok(&["stats", f])?;
    for want in [
        "(in use by ",
        "29 live keys, 12 dead records",
        "live/dead bytes: ",
    ] {
        ensure!(stats.contains(want), "no {want:?} in\n{stats}");
    }
    ensure!(six(&path) == before, "a file changed");
    // As the owner's rebuild leaves it before the copy is complete: still in use, exit 0.
    std::fs::write(side(&path, ".backup"), b"{\"key\":\"k1\",\"value\":1}\n")?;
    let out = tool(&["check", f], b"")?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(out.status.code() == Some(0), "{text}");
    ensure!(
        text.contains("the owner is rebuilding the file") && text.contains("not yet complete"),
        "{text}"
    );
    std::fs::remove_file(side(&path, ".backup"))?;
    // The owner goes on as ever, and a clean close is clean.
    db.set("after".into(), 1)?;
    db.close()?;
    let closed = ok(&["check", f])?;
    ensure!(closed.starts_with(&format!("{f}: clean")), "{closed}");
    Ok(())
}

/// A pipeline's process that is killed when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    Ok(Child(cmd.spawn().with_context(|| format!("{cmd:?}"))?))
}

fn tail_follow(path: &Path) -> Result<Child> {
    spawn(
        Command::new(env!("CARGO_BIN_EXE_ptvp35"))
            .args(["tail", s(path), "--follow", "--interval", "0.02"])
            .stdout(Stdio::piped()),
    )
}

fn apply_from(path: &Path, feed: impl Into<Stdio>) -> Result<Child> {
    spawn(
        Command::new(env!("CARGO_BIN_EXE_ptvp35"))
            .args(["apply", s(path)])
            .stdin(feed)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// Waits until `dump` of `path` prints `want` (the database may not exist yet).
fn converges(path: &Path, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = tool(&["dump", s(path)], b"")?;
        if out.status.success() && out.stdout == want.as_bytes() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} never became\n{want}\nit is\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends a pipeline: kills its `tail`, so that `apply` reads the end of its input, commits
/// and exits 0.
fn finish(mut tail: Child, mut apply: Child) -> Result<String> {
    let _ = tail.0.kill();
    let _ = tail.0.wait();
    let child = std::mem::replace(&mut apply.0, Command::new("true").spawn()?);
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "apply: {}: {stderr}", out.status);
    Ok(String::from_utf8(out.stdout)?)
}

/// `docs/feed.md`, run: `ptvp35 tail A --follow | ptvp35 apply B` while a writer commits to
/// A (sets, removals, a transaction, a rebuild), and the same through `jq --unbuffered`
/// keeping some keys, where `jq` is installed; B ends equal to A.
#[test]
fn a_change_feed_from_tail_into_apply_replicates_the_database() -> Result<()> {
    let d = Dir::new("feed")?;
    let (a, b, c) = (d.0.join("a.db"), d.0.join("b.db"), d.0.join("c.db"));
    let db = Db::open(&a)?;
    db.set("before".into(), 0)?;
    db.set("user:0".into(), 0)?;

    let mut tail = tail_follow(&a)?;
    let apply = apply_from(&b, tail.0.stdout.take().context("stdout")?)?;
    let has_jq = Command::new("jq").arg("--version").output().is_ok();
    let filtered = if has_jq {
        let mut tail = tail_follow(&a)?;
        let mut jq = spawn(
            Command::new("jq")
                .args(["--unbuffered", "-c", "select(.key | startswith(\"user:\"))"])
                .stdin(tail.0.stdout.take().context("stdout")?)
                .stdout(Stdio::piped()),
        )?;
        let apply = apply_from(&c, jq.0.stdout.take().context("stdout")?)?;
        Some((tail, jq, apply))
    } else {
        eprintln!("jq is not installed: the jq leg of the feed is not run");
        None
    };

    for i in 0..200 {
        db.set(format!("k{}", i % 37), i)?;
        if i % 5 == 0 {
            db.remove(&format!("k{}", (i * 7) % 37))?;
            db.set(format!("user:{}", i % 11), i)?;
        }
    }
    let tx = db.transaction();
    tx.set_nowait("t1".into(), 1)?;
    tx.set_nowait("t2".into(), 2)?;
    tx.remove_nowait("before")?;
    tx.remove_nowait("user:0")?;
    tx.commit()?;
    db.compact()?;
    db.set("last".into(), 999)?;

    let want = ok(&["dump", s(&a)])?;
    converges(&b, &want)?;
    if let Some((tail, jq, apply)) = filtered {
        let mut users = String::new();
        for l in want.lines().filter(|l| l.starts_with("{\"key\":\"user:")) {
            users.push_str(l);
            users.push('\n');
        }
        converges(&c, &users)?;
        drop(jq);
        finish(tail, apply)?;
    }
    db.close()?;
    let summary = finish(tail, apply)?;
    ensure!(summary.contains("b.db: applied "), "{summary}");
    ensure!(ok(&["dump", s(&b)])? == want);
    ensure!(ok(&["check", s(&b)])?.contains(": clean"));
    Ok(())
}

/// `apply` commits what it reads; a bad line stops it with the line's number, and no line
/// of its group is committed.
#[test]
fn apply_commits_records_and_stops_at_a_bad_line() -> Result<()> {
    let d = Dir::new("apply")?;
    let path = d.0.join("b.db");
    let f = s(&path);
    let out = tool(
        &["apply", f],
        b"{\"key\":\"a\",\"value\":1}\n\n{\"key\": \"b\", \"value\": [1, 2]}\n{\"key\":\"a\"}\n",
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8(out.stdout)?;
    ensure!(
        summary.contains("applied 2 sets and 1 removals in 1 commits"),
        "{summary}"
    );
    ensure!(ok(&["dump", f])? == "{\"key\":\"b\",\"value\":[1, 2]}\n");
    for (input, why) in [
        (
            &b"{\"key\":\"c\",\"value\":1}\n{\"key\":\"d\",\"valeu\":1}\n"[..],
            "unknown field",
        ),
        (
            b"{\"key\":\"c\",\"value\":1}\n{\"key\":\"d\",\"value\":1e400}\n",
            "read back",
        ),
        (b"{\"key\":\"c\",\"value\":1}\n[\"d\", 1]\n", "not a record"),
    ] {
        let out = tool(&["apply", f], input)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(64), "{stderr}");
        ensure!(
            stderr.contains("line 2") && stderr.contains(why),
            "{stderr}"
        );
        ensure!(
            ok(&["dump", f])? == "{\"key\":\"b\",\"value\":[1, 2]}\n",
            "c was committed"
        );
    }
    Ok(())
}
