//! Files cross between the Python library's format and this crate, both ways, checked
//! against the machine's `python3` (each test is skipped, with the reason printed, if
//! there is none): what Python's `json.dumps` writes opens here with every value, and
//! every line this crate writes reads in Python's `json.loads` to the same key and value.
//! What does not cross fails with an error that names the file and the line.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use common::{TempDir, TestDb};
use ptvp35::{Delta, Error, Options};
use serde_json::{json, Value};

/// Runs `python3 -c script args...` and returns its stdout, or `None` if there is no
/// `python3` on this machine.
fn python(script: &str, args: &[&Path]) -> Result<Option<String>> {
    let out = match Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: cannot run python3 ({e})");
            return Ok(None);
        }
    };
    ensure!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(String::from_utf8(out.stdout)?))
}

/// Writes a ptvp35 file the way the Python library does: `json.dumps` of each record
/// with the default separators and `ensure_ascii`, tuple keys (JSON arrays), then a
/// session that crashed: `P.truncate` (16 bytes, little-endian) and `P.truncate_flag`,
/// and a torn last line after the recorded count.
const PY_WRITE: &str = r#"
import json, sys
path = sys.argv[1]
records = [
    (("tuple", 0), {"dict": "example", "nested": [1, [2, {"x": None, "y": True}]], "e": {}}),
    (("text", 1), "caf\u00e9 \u00fc \u65e5\u672c \U0001F389 \"quoted\" \\ back\nline\ttab"),
    (("i64", 2), [2**63 - 1, -2**63]),
    (("u64", 3), 2**64 - 1),
    (("exact", 4), 2**53 + 1),
    (("float", 5), [0.1, -2.5e-300, 1e300, -0.0, 3.0]),
    (("tuple", 0), {"dict": "replaced"}),
    (("none", 6), None),
    (("", 7), ""),
]
with open(path, "w", encoding="ascii", newline="\n") as f:
    for k, v in records:
        f.write(json.dumps({"key": k, "value": v}) + "\n")
    count = f.tell()
    f.write(json.dumps({"key": ("torn", 8), "value": "never acknowledged"})[:25])
with open(path + ".truncate", "wb") as f:
    f.write(count.to_bytes(16, "little"))
open(path + ".truncate_flag", "wb").close()
print(count)
"#;

#[test]
fn a_file_written_by_python_opens_with_every_value() -> Result<()> {
    let dir = TempDir::new("py-to-rust")?;
    let path = dir.join("py.db");
    let Some(out) = python(PY_WRITE, &[&path])? else {
        return Ok(());
    };
    let count: u64 = out.trim().parse()?;
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.contains("{\"key\": [\"tuple\", 0], \"value\": {\"dict\": \"example\""));
    ensure!(text.contains("\\u00e9") && text.contains("\\ud83c\\udf89"));

    let db = TestDb::<(String, u32), Value>::open(&path)?;
    let report = db.recovery_report().clone();
    ensure!(
        report.cut == Some(ptvp35::Cut::new(count, 25)),
        "{report:?}"
    );
    let get = |k: &str, n: u32| db.get(&(k.to_owned(), n));
    ensure!(get("tuple", 0) == Some(json!({"dict": "replaced"})));
    ensure!(
        get("text", 1) == Some(json!("café ü 日本 🎉 \"quoted\" \\ back\nline\ttab")),
        "{:?}",
        get("text", 1)
    );
    ensure!(get("i64", 2) == Some(json!([i64::MAX, i64::MIN])));
    ensure!(get("u64", 3) == Some(json!(u64::MAX)));
    ensure!(get("exact", 4) == Some(json!(9_007_199_254_740_993_u64)));
    ensure!(get("float", 5) == Some(json!([0.1, -2.5e-300, 1e300, -0.0, 3.0])));
    ensure!(get("none", 6) == Some(Value::Null));
    ensure!(get("", 7) == Some(json!("")));
    ensure!(get("torn", 8).is_none());
    ensure!(db.len() == 8);
    db.close()?;
    // The torn tail went to `P.error`, whole, ended by a newline.
    let error = std::fs::read_to_string(dir.join("py.db.error"))?;
    ensure!(error == "{\"key\": [\"torn\", 8], \"val\n", "{error:?}");
    ensure!(dir.files()? == ["py.db", "py.db.error"]);

    Ok(())
}

type Db<V> = TestDb<(String, u32), V>;

/// Writes one record per value of the Python list `values` (key `("k", i)`) with
/// Python's `json.dumps`, then opens the file with values of type `V`; `None` without
/// python3.
fn python_values<V: ptvp35::Value>(
    dir: &TempDir,
    values: &str,
) -> Result<Option<ptvp35::Result<Db<V>>>> {
    let path = dir.join(&format!("v{}.db", dir.files()?.len()));
    let script = format!(
        "import json, sys\nwith open(sys.argv[1], 'w') as f:\n    for i, v in enumerate({values}):\n        \
         f.write(json.dumps({{'key': ('k', i), 'value': v}}) + '\\n')\n"
    );
    if python(&script, &[&path])?.is_none() {
        return Ok(None);
    }
    Ok(Some(TestDb::<(String, u32), V>::open(&path)))
}

/// As [`python_values`], for values that must not open.
fn python_value_fails<V: ptvp35::Value>(dir: &TempDir, values: &str) -> Result<Option<Error>> {
    match python_values::<V>(dir, values)? {
        None => Ok(None),
        Some(Ok(db)) => bail!("{values} opened: {db:?}"),
        Some(Err(e)) => Ok(Some(e)),
    }
}

#[test]
fn typed_integers_take_the_64_bit_extremes_exactly() -> Result<()> {
    let dir = TempDir::new("py-ints")?;
    let Some(db) = python_values::<i64>(&dir, "[2**63 - 1, -2**63, 2**53 + 1]")? else {
        return Ok(());
    };
    let db = db?;
    let got: Vec<Option<i64>> = (0..3).map(|i| db.get(&("k".into(), i))).collect();
    ensure!(got == [Some(i64::MAX), Some(i64::MIN), Some(9_007_199_254_740_993)]);
    db.close()?;
    let Some(db) = python_values::<u64>(&dir, "[2**64 - 1]")? else {
        return Ok(());
    };
    let db = db?;
    ensure!(db.get(&("k".into(), 0)) == Some(u64::MAX));
    db.close()?;
    Ok(())
}

#[test]
fn what_does_not_cross_fails_naming_the_line() -> Result<()> {
    let dir = TempDir::new("py-bad")?;
    for (values, bad_line) in [
        ("[1.5, float('nan')]", 2),
        ("[1.5, 2.5, float('inf')]", 3),
        ("[float('-inf')]", 1),
    ] {
        let Some(e) = python_value_fails::<Value>(&dir, values)? else {
            return Ok(());
        };
        match &e {
            Error::Corrupt { line, path, .. } => {
                ensure!(*line == bad_line, "{values}: {e}");
                ensure!(path.starts_with(dir.path()));
            }
            other => bail!("{values}: expected a corrupt line, got {other:?}"),
        }
        ensure!(
            e.to_string().contains(&format!("at line {bad_line} ")),
            "{e}"
        );
    }
    // Integers beyond 64 bits: refused by typed integers, naming the line...
    for (values, line) in [
        ("[1, 2**64]", 2),
        ("[-2**63 - 1]", 1),
        ("[7, 8, 2**100]", 3),
    ] {
        let Some(e) = python_value_fails::<i64>(&dir, values)? else {
            return Ok(());
        };
        ensure!(
            matches!(e, Error::Corrupt { line: l, .. } if l == line),
            "{values}: {e}"
        );
    }
    let Some(e) = python_value_fails::<u64>(&dir, "[2**64]")? else {
        return Ok(());
    };
    ensure!(e.to_string().contains("at line 1 "), "{e}");
    ensure!(e.to_string().contains("u64"), "{e}");
    Ok(())
}

#[test]
fn serde_json_value_reads_integers_beyond_64_bits_as_floats() -> Result<()> {
    // Documented in docs/format.md: lossy, because serde_json's `Value` has no big
    // integers without its `arbitrary_precision` feature. Typed integers refuse them.
    let dir = TempDir::new("py-bigint")?;
    let path = dir.join("big.db");
    let script = "import json, sys\nopen(sys.argv[1], 'w').write(json.dumps({'key': 'k', 'value': 2**70}) + '\\n')\n";
    if python(script, &[&path])?.is_none() {
        return Ok(());
    }
    let db = TestDb::<String, Value>::open(&path)?;
    let v = db.get("k").context("the key is there")?;
    ensure!(v.is_f64() && v.as_f64() == Some(2f64.powi(70)), "{v}");
    db.close()?;
    Ok(())
}

/// Reads every line of a ptvp35 file with `json.loads` and prints, per line, the key, the
/// value (absent for a removal) and whether the line carries a batch checksum, re-encoded
/// by Python; then the state the whole file leaves.
const PY_READ: &str = r#"
import json, sys
state = {}
with open(sys.argv[1], encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
        assert line.endswith("\n"), n
        rec = json.loads(line)
        assert set(rec) <= {"key", "value", "ck"}, (n, sorted(rec))
        out = {"line": n, "key": rec["key"], "ck": "ck" in rec}
        k = json.dumps(rec["key"], sort_keys=True)
        if "value" in rec:
            out["value"] = rec["value"]
            state[k] = [rec["key"], rec["value"]]
        else:
            state.pop(k, None)
        print(json.dumps(out))
print(json.dumps({"state": sorted(state.values(), key=json.dumps)}))
"#;

#[test]
fn every_line_this_crate_writes_reads_in_python() -> Result<()> {
    let dir = TempDir::new("rust-to-py")?;
    let path = dir.join("rs.db");
    let mut model: BTreeMap<(String, u32), Value> = BTreeMap::new();
    {
        let db = Options::new().open_as::<(String, u32), Value, common::Kind>(&path)?;
        let mut set = |k: &str, n: u32, v: Value| -> Result<()> {
            db.set((k.to_owned(), n), v.clone())?;
            model.insert((k.to_owned(), n), v);
            Ok(())
        };
        set(
            "tuple",
            0,
            json!({"dict": "example", "n": [1, [2, {"x": null}]]}),
        )?;
        set(
            "text",
            1,
            json!("café 日本 🎉 \"q\" \\ \n\t\u{1} \u{7f} \u{2028}"),
        )?;
        set(
            "ints",
            2,
            json!([u64::MAX, i64::MIN, 9_007_199_254_740_993_u64]),
        )?;
        set("floats", 3, json!([0.1, 1e300, -2.5e-300, -0.0, 3.0]))?;
        set("null", 4, Value::Null)?;
        set("é", 5, json!(""))?;
        // A transaction: several lines in one batch, the last with the `"ck"` tail.
        let mut delta = Delta::new();
        for i in 10..20 {
            delta.set(("tx".to_owned(), i), json!({"i": i}))?;
            model.insert(("tx".to_owned(), i), json!({"i": i}));
        }
        delta.remove(&("text".to_owned(), 1))?;
        model.remove(&("text".to_owned(), 1));
        db.commit_transaction(delta)?;
        // A removal on its own line (its batch's last line, so it has `"ck"` too).
        db.remove(&("null".to_owned(), 4))?;
        model.remove(&("null".to_owned(), 4));
        db.set(("tuple".to_owned(), 0), json!("replaced"))?;
        model.insert(("tuple".to_owned(), 0), json!("replaced"));
        db.close()?;
    }
    let Some(out) = python(PY_READ, &[&path])? else {
        return Ok(());
    };
    let file = std::fs::read_to_string(&path)?;
    let lines: Vec<&str> = file.lines().collect();
    let py: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        py.len() == lines.len() + 1,
        "{} lines, {} read",
        lines.len(),
        py.len()
    );
    let (mut with_ck, mut removals) = (0, 0);
    for (line, p) in lines.iter().zip(&py) {
        // Python's key and value are the ones serde_json reads from the same line.
        let ours: Value = serde_json::from_str(line)?;
        ensure!(p["key"] == ours["key"], "{line}: python read {}", p["key"]);
        ensure!(
            p.get("value") == ours.get("value"),
            "{line}: python read {p}"
        );
        ensure!(p["ck"] == json!(ours.get("ck").is_some()), "{line}");
        with_ck += usize::from(ours.get("ck").is_some());
        removals += usize::from(ours.get("value").is_none());
    }
    ensure!(
        with_ck >= 5 && removals == 2,
        "{with_ck} batch tails, {removals} removals"
    );

    // The state Python rebuilds from the whole file is the one this crate committed.
    let state = py
        .last()
        .and_then(|s| s["state"].as_array())
        .context("state")?;
    let mut theirs = BTreeMap::new();
    for pair in state {
        let key: (String, u32) = serde_json::from_value(pair[0].clone())?;
        theirs.insert(key, pair[1].clone());
    }
    ensure!(theirs == model, "python: {theirs:?}\nrust: {model:?}");
    Ok(())
}

/// Random doubles of every magnitude, as Python writes them (shortest repr), with their
/// bit patterns.
const PY_FLOATS: &str = r#"
import json, random, struct, sys
random.seed(35)
with open(sys.argv[1], "w") as f, open(sys.argv[2], "w") as bits:
    for i in range(20000):
        x = struct.unpack("<d", struct.pack("<Q", random.getrandbits(64)))[0]
        if x != x or x in (float("inf"), float("-inf")):
            x = random.random()
        f.write(json.dumps({"key": i, "value": x}) + "\n")
        bits.write("%d\n" % struct.unpack("<Q", struct.pack("<d", x))[0])
"#;

/// Reads a ptvp35 file of float values and prints each one's bit pattern by key.
const PY_FLOAT_BITS: &str = r#"
import json, struct, sys
out = {}
for line in open(sys.argv[1]):
    rec = json.loads(line)
    out[rec["key"]] = struct.unpack("<Q", struct.pack("<d", rec["value"]))[0]
for k in sorted(out):
    print(out[k])
"#;

#[test]
fn floats_cross_bit_for_bit_both_ways() -> Result<()> {
    let dir = TempDir::new("py-floats")?;
    let (path, bits_path) = (dir.join("f.db"), dir.join("bits.txt"));
    if python(PY_FLOATS, &[&path, &bits_path])?.is_none() {
        return Ok(());
    }
    let want: Vec<u64> = std::fs::read_to_string(&bits_path)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let db = TestDb::<u32, f64>::open(&path)?;
    let mut off = Vec::new();
    for (i, w) in (0u32..).zip(&want) {
        let got = db.get(&i).context("every key")?;
        if got.to_bits() != *w {
            off.push((i, f64::from_bits(*w), got));
        }
    }
    ensure!(
        off.is_empty(),
        "{} of {} floats read off: {:?}",
        off.len(),
        want.len(),
        &off[..off.len().min(3)]
    );
    // Back: this crate rewrites them all, Python reads the same bits.
    db.compact()?;
    db.close()?;
    let Some(out) = python(PY_FLOAT_BITS, &[&path])? else {
        return Ok(());
    };
    let back: Vec<u64> = out.lines().map(str::parse).collect::<Result<_, _>>()?;
    ensure!(back == want, "python read different floats back");
    Ok(())
}

/// The same without Python: what this crate writes, it reads back bit for bit (before
/// `serde_json`'s `float_roundtrip` was enabled, 5,972 of these 20,000 came back one unit
/// in the last place off after a reopen).
#[test]
fn floats_survive_a_reopen_bit_for_bit() -> Result<()> {
    let dir = TempDir::new("floats-reopen")?;
    let path = dir.join("f.db");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut want = Vec::with_capacity(20_000);
    let db = TestDb::<u32, f64>::open(&path)?;
    for i in 0..20_000u32 {
        // xorshift64: every exponent and mantissa, deterministic.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = Some(f64::from_bits(x))
            .filter(|f| f.is_finite())
            .unwrap_or(0.5);
        want.push(f.to_bits());
        db.set_nowait(i, f)?;
    }
    db.close()?;
    let db = TestDb::<u32, f64>::open(&path)?;
    let off = (0u32..)
        .zip(&want)
        .filter(|(i, w)| db.get(i).map(f64::to_bits) != Some(**w))
        .count();
    ensure!(
        off == 0,
        "{off} of {} floats changed across a reopen",
        want.len()
    );
    db.close()?;
    Ok(())
}
