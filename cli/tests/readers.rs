//! The tool beside a running owner: `check`, `dump`, `get`, `stats` and `backup` read a
//! database this test process holds open (the tool is another process); `tail --follow`
//! sees commits and a rebuild; writes wait with `--wait`; values come from stdin or a file.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ptvp35::DbConnection;

type Db = DbConnection<String, i64>;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Result<Self> {
        let d =
            std::env::temp_dir().join(format!("ptvp35-cli-readers-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(Dir(d))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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
