//! Opens a database file written by the Python library: tuple keys (JSON arrays), nested
//! values, `\uXXXX` escapes, `", "` and `": "` separators.
//!
//! ```text
//! cargo run --example python_file -- path/to/data.db
//! cargo run --example python_file          # writes a sample file first
//! ```
//!
//! Without a path, the example writes a sample with the machine's `python3` (the way the
//! Python library's `json.dumps` writes records), or, if there is none, with the same bytes
//! written out here. Keys are read as JSON arrays of a string and a number, values as any
//! JSON; use your own types where you know the schema.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use ptvp35::DbConnection;
use serde_json::Value;

/// What Python's `json.dumps` writes for the sample records.
const SAMPLE: &str = "\
{\"key\": [\"tuple\", 0], \"value\": {\"dict\": \"example\", \"list\": [1, 2.5, null, true]}}
{\"key\": [\"text\", 1], \"value\": \"caf\\u00e9 \\u65e5\\u672c \\ud83c\\udf89\"}
{\"key\": [\"big\", 2], \"value\": 18446744073709551615}
{\"key\": [\"tuple\", 0], \"value\": {\"dict\": \"replaced\"}}
";

const PY_SAMPLE: &str = r#"
import json, sys
with open(sys.argv[1], "w") as f:
    for k, v in [(("tuple", 0), {"dict": "example", "list": [1, 2.5, None, True]}),
                 (("text", 1), "caf\u00e9 \u65e5\u672c \U0001F389"),
                 (("big", 2), 2**64 - 1),
                 (("tuple", 0), {"dict": "replaced"})]:
        f.write(json.dumps({"key": k, "value": v}) + "\n")
"#;

fn main() -> anyhow::Result<()> {
    let (path, sample_dir) = if let Some(p) = std::env::args_os().nth(1) {
        (PathBuf::from(p), None)
    } else {
        let dir = std::env::temp_dir().join(format!("ptvp35-python-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("python.db");
        write_sample(&path)?;
        (path, Some(dir))
    };

    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    print!("{text}");
    let db = DbConnection::<(String, i64), Value>::open(&path)?;
    if !db.recovery_report().was_clean() {
        println!("recovered: {:?}", db.recovery_report());
    }
    let mut keys = Vec::new();
    db.for_each(|k, _| keys.push(k.clone()));
    keys.sort();
    for key in keys {
        println!("{key:?} => {}", db.get(&key).unwrap_or(Value::Null));
    }
    db.close()?;

    if let Some(dir) = sample_dir {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

/// Writes the sample with `python3`, or with [`SAMPLE`] where there is none.
fn write_sample(path: &Path) -> anyhow::Result<()> {
    let by_python = Command::new("python3")
        .arg("-c")
        .arg(PY_SAMPLE)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if !by_python {
        std::fs::write(path, SAMPLE)?;
    }
    let by = if by_python { "python3" } else { "this example" };
    println!("sample written by {by} to {}", path.display());
    Ok(())
}
