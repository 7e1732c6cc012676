//! One NDJSON line <-> one record, and the checksum tail that closes a batch. Pure, no I/O.
//!
//! A set is `{"key":K,"value":V}`, a removal `{"key":K}` (no `"value"` field, so no value,
//! not even `null`, can be mistaken for it). The last line of every batch the writer
//! appends carries one more field, `"ck"`, holding the XXH3-64 of every byte of the file
//! before its digits; see `docs/format.md` and `docs/recovery.md`.
//!
//! Writer and reader agree by construction: every line is decoded back, by the reader's
//! own [`decode`] and so under its limits, before it is accepted, and the copy read back
//! must digest ([`trace`]) exactly like the original. A key or value that the reader
//! would refuse (nested too deep, a number out of range) or read as another value
//! (`Some(None)` written as `null`, an untagged variant read as its sibling) is refused
//! at the call.

pub(crate) mod chain;
mod trace;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};

/// `,"ck":"` — what precedes the 16 hex digits of a batch checksum.
const CK_OPEN: &[u8] = b",\"ck\":\"";
/// Length of `,"ck":"` + 16 hex digits + `"}`.
pub(crate) const CK_SUFFIX_LEN: usize = CK_OPEN.len() + 16 + 2;

/// Appends `{"key":K,"value":V}\n` to `out`, or leaves `out` as it was and returns an error
/// if the key or the value cannot be stored faithfully: if `serde_json` cannot write it, or
/// if the line would not read back, through [`decode`], as this very key and value.
pub(crate) fn encode_set<K, V>(key: &K, value: &V, out: &mut Vec<u8>) -> Result<()>
where
    K: Serialize + DeserializeOwned + Eq,
    V: Serialize + DeserializeOwned,
{
    encode_set_with(key, value, out, true)
}

fn encode_set_with<K, V>(key: &K, value: &V, out: &mut Vec<u8>, verify: bool) -> Result<()>
where
    K: Serialize + DeserializeOwned + Eq,
    V: Serialize + DeserializeOwned,
{
    let start = out.len();
    let r = (|| {
        let digests = if verify {
            Some((digest(key, "key")?, digest(value, "value")?))
        } else {
            None
        };
        out.extend_from_slice(b"{\"key\":");
        write_json(key, "key", out)?;
        out.extend_from_slice(b",\"value\":");
        write_json(value, "value", out)?;
        out.extend_from_slice(b"}\n");
        let Some((key_digest, value_digest)) = digests else {
            return Ok(());
        };
        let line = &out[start..out.len() - 1];
        match decode::<K, V>(line) {
            Ok(Some(Record::Set(k, v))) => {
                same_key(key, key_digest, &k, line)?;
                if digest(&v, "value")? != value_digest {
                    return Err(not_itself("value", line));
                }
                Ok(())
            }
            Ok(_) => Err(not_itself("value", line)),
            Err(e) => Err(unreadable::<K>(line, &e)),
        }
    })();
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Appends `{"key":K}\n` (a removal) to `out`, or leaves it as it was on error (as
/// [`encode_set`] does for the key).
pub(crate) fn encode_remove<K>(key: &K, out: &mut Vec<u8>) -> Result<()>
where
    K: Serialize + DeserializeOwned + Eq,
{
    let start = out.len();
    let r = (|| {
        let key_digest = digest(key, "key")?;
        out.extend_from_slice(b"{\"key\":");
        write_json(key, "key", out)?;
        out.extend_from_slice(b"}\n");
        let line = &out[start..out.len() - 1];
        match decode::<K, IgnoredAny>(line) {
            Ok(Some(Record::Remove(k))) => same_key(key, key_digest, &k, line),
            Ok(_) => Err(not_itself("key", line)),
            Err(e) => Err(unreadable::<K>(line, &e)),
        }
    })();
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Times [`encode_set`] for the benchmark: `verify: false` skips the read-back check, to
/// measure what it costs. Not part of the API.
///
/// # Errors
///
/// [`Error::Serialize`], as `DbConnection::set` would return it.
#[doc(hidden)]
pub fn bench_encode_set<K, V>(key: &K, value: &V, out: &mut Vec<u8>, verify: bool) -> Result<()>
where
    K: Serialize + DeserializeOwned + Eq,
    V: Serialize + DeserializeOwned,
{
    encode_set_with(key, value, out, verify)
}

fn write_json<T: Serialize>(x: &T, what: &'static str, out: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(&mut *out, x).map_err(|e| Error::Serialize {
        what,
        reason: e.to_string(),
    })
}

fn digest<T: Serialize>(x: &T, what: &'static str) -> Result<u64> {
    trace::digest(x).map_err(|e| Error::Serialize { what, reason: e.0 })
}

/// The key read back must be equal to the original (`Eq`: it is the map's key) and digest
/// alike (no field that `Eq` ignores changed).
fn same_key<K: Serialize + Eq>(key: &K, key_digest: u64, back: &K, line: &[u8]) -> Result<()> {
    if back == key && digest(back, "key")? == key_digest {
        Ok(())
    } else {
        Err(not_itself("key", line))
    }
}

/// The line decodes, but as another key or value: JSON writes two values alike.
fn not_itself(what: &'static str, line: &[u8]) -> Error {
    Error::Serialize {
        what,
        reason: format!(
            "it would not read back as itself: the line {} reads back as another {what} \
             (JSON writes some different values alike, for example `Some(None)` and `None` \
             of an `Option<Option<T>>`, or two variants of an untagged enum)",
            excerpt(line)
        ),
    }
}

/// The line does not decode: the reader would refuse the file.
fn unreadable<K: DeserializeOwned>(line: &[u8], e: &str) -> Error {
    // Which part: if the key decodes with the value skipped, the value is at fault.
    let what = if decode::<K, IgnoredAny>(line).is_ok() {
        "value"
    } else {
        "key"
    };
    let reason = if e.contains("recursion limit exceeded") {
        format!(
            "it is nested deeper than the reader accepts ({e}; serde_json reads at most \
             {MAX_NESTING} nested arrays and objects in a line, the record's own object \
             included), so the database would not open"
        )
    } else {
        format!("it would not read back ({e}), so the database would not open")
    };
    Error::Serialize { what, reason }
}

/// The most arrays and objects nested in one line that `serde_json`'s reader accepts (its
/// recursion limit; a unit test pins it).
const MAX_NESTING: usize = 127;

/// The first 80 characters of `line`, quoted, for an error message.
fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("`{}...`", &text[..i]),
        None => format!("`{text}`"),
    }
}

/// One decoded line.
#[derive(Debug, PartialEq)]
pub(crate) enum Record<K, V> {
    /// `{"key":K,"value":V}`
    Set(K, V),
    /// `{"key":K}`
    Remove(K),
}

impl<K, V> Record<K, V> {
    pub(crate) fn key(&self) -> &K {
        match self {
            Record::Set(k, _) | Record::Remove(k) => k,
        }
    }
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "K: Deserialize<'de>, V: Deserialize<'de>"))]
struct RawRecord<K, V> {
    key: K,
    #[serde(default = "none", deserialize_with = "present")]
    value: Option<V>,
}

fn none<V>() -> Option<V> {
    None
}

/// A `"value"` field that is present is `Some`, even when it holds `null` (so that
/// `V = Option<T>` keeps `None` values apart from removals).
fn present<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<Option<V>, D::Error> {
    V::deserialize(d).map(Some)
}

/// Decodes one line (without its `\n`; a `\r` before it is accepted as whitespace).
/// Returns `Ok(None)` for a blank line.
pub(crate) fn decode<K: DeserializeOwned, V: DeserializeOwned>(
    line: &[u8],
) -> Result<Option<Record<K, V>>, String> {
    let Some(first) = line.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(None);
    };
    // serde would also read a struct from a JSON array; a record is an object.
    if *first != b'{' {
        return Err("a record must be a JSON object".into());
    }
    let raw: RawRecord<K, V> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    Ok(Some(match raw.value {
        Some(v) => Record::Set(raw.key, v),
        None => Record::Remove(raw.key),
    }))
}

/// Closes a batch: `buf` holds whole record lines, the last one ending in `}\n`; its
/// `}\n` is replaced by `,"ck":"<16 hex>"}\n`, where the digits are the XXH3-64 of every
/// byte of the file before them. `hasher` has seen every byte of the file before `buf`;
/// on return it has seen all of `buf` too.
pub(crate) fn close_batch(buf: &mut Vec<u8>, hasher: &mut Xxh3) {
    debug_assert!(buf.ends_with(b"}\n"));
    buf.truncate(buf.len() - 2);
    buf.extend_from_slice(CK_OPEN);
    hasher.update(buf);
    let digits = format!("{:016x}", hasher.digest());
    let tail_start = buf.len();
    buf.extend_from_slice(digits.as_bytes());
    buf.extend_from_slice(b"\"}\n");
    hasher.update(&buf[tail_start..]);
}

/// One line of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    /// Byte offset of its first byte.
    pub(crate) offset: usize,
    /// Its bytes, without the `\n`.
    pub(crate) bytes: &'a [u8],
    /// Whether a `\n` ended it (only the last line of a file can lack one).
    pub(crate) complete: bool,
}

impl Line<'_> {
    /// The offset just past its `\n` (or its last byte).
    pub(crate) fn end(&self) -> usize {
        self.offset + self.bytes.len() + usize::from(self.complete)
    }
}

/// The lines of `data` from offset `from` on, the one line walker of the crate: every
/// line that ends in `\n`, then the bytes after the last `\n`, if any, as a last line
/// that is not complete.
pub(crate) fn lines(data: &[u8], from: usize) -> impl Iterator<Item = Line<'_>> {
    let mut pos = from.min(data.len());
    std::iter::from_fn(move || {
        let rest = data.get(pos..).filter(|r| !r.is_empty())?;
        let offset = pos;
        let line = match memchr::memchr(b'\n', rest) {
            Some(nl) => Line {
                offset,
                bytes: &rest[..nl],
                complete: true,
            },
            None => Line {
                offset,
                bytes: rest,
                complete: false,
            },
        };
        pos = line.end();
        Some(line)
    })
}

/// How many lines of `data` end in `\n`.
pub(crate) fn count_lines(data: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', data).count() as u64
}

/// If `line` (without its `\n`) ends like a batch's last line, returns how many bytes of
/// it precede the checksum digits and the checksum those digits spell.
pub(crate) fn batch_tail(line: &[u8]) -> Option<(usize, u64)> {
    if line.len() < CK_SUFFIX_LEN || !line.ends_with(b"\"}") {
        return None;
    }
    let open = line.len() - CK_SUFFIX_LEN;
    if &line[open..open + CK_OPEN.len()] != CK_OPEN {
        return None;
    }
    let digits = &line[open + CK_OPEN.len()..line.len() - 2];
    let mut v: u64 = 0;
    for &d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(x);
    }
    Some((open + CK_OPEN.len(), v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn set<K, V>(k: &K, v: &V) -> Result<String>
    where
        K: Serialize + DeserializeOwned + Eq,
        V: Serialize + DeserializeOwned,
    {
        let mut out = Vec::new();
        encode_set(k, v, &mut out)?;
        Ok(String::from_utf8(out).expect("json is utf-8"))
    }

    #[test]
    fn encodes_sets_and_removals() -> Result<()> {
        assert_eq!(set(&"a".to_owned(), &1)?, "{\"key\":\"a\",\"value\":1}\n");
        assert_eq!(
            set(&("tuple".to_owned(), "example".to_owned()), &None::<u8>)?,
            "{\"key\":[\"tuple\",\"example\"],\"value\":null}\n"
        );
        let mut out = Vec::new();
        encode_remove(&7, &mut out)?;
        assert_eq!(out, b"{\"key\":7}\n");
        Ok(())
    }

    #[test]
    fn refuses_non_finite_floats_anywhere_and_leaves_buffer() {
        let mut out = b"keep".to_vec();
        let e = encode_set(&"k".to_owned(), &vec![Some(1.0), Some(f64::NAN)], &mut out);
        assert!(matches!(e, Err(Error::Serialize { what: "value", .. })));
        assert_eq!(out, b"keep");
        assert!(encode_set(&"k".to_owned(), &Some(f32::INFINITY), &mut out).is_err());
        assert!(encode_set(&1, &f64::NEG_INFINITY, &mut out).is_err());
        assert_eq!(out, b"keep");
    }

    #[test]
    fn refuses_values_serde_json_cannot_write() {
        let mut m = HashMap::new();
        m.insert(vec![1u8], 2u8);
        let mut out = Vec::new();
        let e = encode_set(&"k".to_owned(), &m, &mut out);
        assert!(
            matches!(e, Err(Error::Serialize { what: "value", .. })),
            "{e:?}"
        );
        assert!(out.is_empty());
    }

    /// `depth` nested one-element arrays around `1`.
    fn nested(depth: usize) -> serde_json::Value {
        let mut v = serde_json::json!(1);
        for _ in 0..depth {
            v = serde_json::Value::Array(vec![v]);
        }
        v
    }

    fn refused<T>(r: Result<T>, what: &str, needle: &str) {
        match r {
            Err(Error::Serialize { what: w, reason }) => {
                assert_eq!(w, what, "{reason}");
                assert!(reason.contains(needle), "{reason}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("accepted a {what} that does not read back as itself"),
        }
    }

    #[test]
    fn max_nesting_is_serde_jsons_recursion_limit() {
        let text = |n| "[".repeat(n) + &"]".repeat(n);
        assert!(serde_json::from_str::<serde_json::Value>(&text(MAX_NESTING)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&text(MAX_NESTING + 1)).is_err());
    }

    /// Issue 9, item 3: a value nested deeper than the reader's limit was written and
    /// acknowledged, and the file then refused to open.
    #[test]
    fn refuses_values_nested_deeper_than_the_reader_reads() -> Result<()> {
        // The record's own object is one level: a value may nest one less.
        let deepest = nested(MAX_NESTING - 1);
        let line = set(&"k".to_owned(), &deepest)?;
        let back: Record<String, serde_json::Value> = decode(line.trim_end().as_bytes())
            .expect("the deepest accepted value reads back")
            .expect("not blank");
        assert_eq!(back, Record::Set("k".into(), deepest));

        let mut out = b"keep".to_vec();
        let too_deep = nested(MAX_NESTING);
        refused(
            encode_set(&"k".to_owned(), &too_deep, &mut out),
            "value",
            "nested deeper",
        );
        assert_eq!(out, b"keep");
        refused(encode_set(&too_deep, &1, &mut out), "key", "nested deeper");
        refused(encode_remove(&too_deep, &mut out), "key", "nested deeper");
        assert_eq!(out, b"keep");
        Ok(())
    }

    /// Issue 9, item 3: `Some(None)` was written as `null` and read back as `None`.
    #[test]
    fn refuses_some_none_of_an_option_option() -> Result<()> {
        let mut out = b"keep".to_vec();
        refused(
            encode_set(&"a".to_owned(), &Some(None::<u8>), &mut out),
            "value",
            "would not read back as itself",
        );
        refused(
            encode_set(&vec![Some(None::<u8>)], &1, &mut out),
            "key",
            "would not read back as itself",
        );
        assert_eq!(out, b"keep");
        assert_eq!(
            set(&"a".to_owned(), &None::<Option<u8>>)?,
            "{\"key\":\"a\",\"value\":null}\n"
        );
        assert_eq!(
            set(&"a".to_owned(), &Some(Some(1u8)))?,
            "{\"key\":\"a\",\"value\":1}\n"
        );
        Ok(())
    }

    #[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
    #[serde(untagged)]
    enum Untagged {
        A { x: u8 },
        B { x: u8 },
        C(Vec<u8>),
        D { x: u8, y: u8 },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Number {
        Float(f64),
        Int(i64),
    }

    #[derive(Serialize, Deserialize)]
    struct Flat {
        a: u8,
        #[serde(flatten)]
        rest: std::collections::BTreeMap<String, u8>,
    }

    #[derive(Serialize, Deserialize)]
    struct Skips {
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tags: Vec<u8>,
    }

    #[derive(Serialize, Deserialize)]
    struct Default0 {
        #[serde(skip_serializing_if = "is_zero", default = "seven")]
        n: u8,
    }
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` signature
    fn is_zero(n: &u8) -> bool {
        *n == 0
    }
    fn seven() -> u8 {
        7
    }

    /// A hand-written pair that disagrees with itself: written as a string, read as a
    /// number.
    #[derive(Debug, PartialEq, Eq)]
    struct Custom(u8);
    impl Serialize for Custom {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.0.to_string())
        }
    }
    impl<'de> Deserialize<'de> for Custom {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            u8::deserialize(d).map(Custom)
        }
    }

    /// Written as a `u16`, read as a `u8`.
    #[derive(Serialize, Deserialize)]
    #[serde(into = "u16", from = "u8")]
    #[derive(Clone, Copy)]
    struct Narrow(u16);
    impl From<Narrow> for u16 {
        fn from(n: Narrow) -> u16 {
            n.0
        }
    }
    impl From<u8> for Narrow {
        fn from(n: u8) -> Narrow {
            Narrow(n.into())
        }
    }

    #[test]
    fn refuses_the_ambiguous_forms_by_reading_back() -> Result<()> {
        let mut out = Vec::new();
        // Untagged variants that read back as a sibling of another shape: a value whose
        // events differ, or a key that `Eq` tells apart (values of one shape, like `A`
        // and `B` here, are the same events and only `PartialEq` could tell them).
        refused(
            encode_set(&1, &Untagged::D { x: 1, y: 2 }, &mut out),
            "value",
            "as itself",
        );
        refused(
            encode_set(&1, &Number::Int(3), &mut out),
            "value",
            "as itself",
        );
        refused(
            encode_set(&Untagged::B { x: 1 }, &1, &mut out),
            "key",
            "as itself",
        );
        set(&Untagged::A { x: 1 }, &Untagged::A { x: 1 })?;
        set(&Untagged::C(vec![1, 2]), &Number::Float(3.0))?;
        // A flattened map holding a field's name: written twice, read back otherwise.
        let clash = Flat {
            a: 1,
            rest: [("a".to_owned(), 2)].into(),
        };
        assert!(encode_set(&1, &clash, &mut out).is_err());
        let fine = Flat {
            a: 1,
            rest: [("b".to_owned(), 2)].into(),
        };
        set(&1, &fine)?;
        // A skipped field with no default: the reader wants it.
        refused(
            encode_set(&1, &Skips { tags: vec![] }, &mut out),
            "value",
            "missing field",
        );
        set(&1, &Skips { tags: vec![1] })?;
        // A skipped field whose default is another value.
        refused(
            encode_set(&1, &Default0 { n: 0 }, &mut out),
            "value",
            "as itself",
        );
        set(&1, &Default0 { n: 7 })?;
        // A hand-written impl that reads back as something else, or not at all.
        refused(encode_set(&1, &Custom(3), &mut out), "value", "read back");
        refused(encode_remove(&Custom(3), &mut out), "key", "read back");
        // A number that the reader's type cannot hold.
        refused(
            encode_set(&1, &Narrow(300), &mut out),
            "value",
            "invalid value",
        );
        assert!(out.is_empty());
        Ok(())
    }

    #[test]
    fn accepts_what_reads_back_whatever_its_order() -> Result<()> {
        let map: HashMap<String, Vec<f64>> = (0..40)
            .map(|i| (format!("k{i}"), vec![f64::from(i) / 3.0, -0.0, 1e300]))
            .collect();
        set(&"m".to_owned(), &map)?;
        let numbers: HashMap<u32, i64> = (0..40).map(|i| (i, -i64::from(i) << 40)).collect();
        set(&"n".to_owned(), &numbers)?;
        let set_: std::collections::HashSet<(String, char)> =
            (0..40).map(|i| (format!("s{i}"), 'é')).collect();
        set(&"s".to_owned(), &set_)?;
        set(
            &("tuple".to_owned(), 1u64, -2i8),
            &(f32::MIN_POSITIVE, f32::MAX, 0.1f32),
        )?;
        set(&u64::MAX, &(i128::MIN, u128::from(u64::MAX) + 1))?;
        set(
            &"v".to_owned(),
            &serde_json::json!({"a": [1, 2.5, null, "x", {"b": false}]}),
        )?;
        set(&"o".to_owned(), &Some(Some(None::<u8>)).map(|_| Some(2u8)))?;
        let mut out = Vec::new();
        encode_remove(&("tuple".to_owned(), 1u64), &mut out)?;
        Ok(())
    }

    #[test]
    fn decodes_python_style_lines_and_keeps_null_apart_from_removal() {
        let r: Record<(String, String), serde_json::Value> =
            decode(br#"{"key": ["tuple", "example"], "value": {"dict": "ex\u00e4mple"}}"#)
                .expect("decodes")
                .expect("not blank");
        assert_eq!(
            r,
            Record::Set(
                ("tuple".into(), "example".into()),
                serde_json::json!({"dict": "exämple"})
            )
        );
        let r: Record<u32, Option<u8>> = decode(br#"{"key": 123, "value": null}"#)
            .expect("decodes")
            .expect("not blank");
        assert_eq!(r, Record::Set(123, None));
        let r: Record<u32, Option<u8>> = decode(br#"{"key":123}"#).expect("ok").expect("x");
        assert_eq!(r, Record::Remove(123));
        assert!(decode::<u32, u8>(b"  \r").expect("blank").is_none());
        assert!(decode::<u32, u8>(br#"{"key":1,"key":2,"value":3}"#).is_err());
        assert!(decode::<u32, u8>(br#"{"value":3}"#).is_err());
        assert!(decode::<u32, u8>(b"[1,2]").is_err());
        assert!(decode::<u32, u8>(b"\xff").is_err());
    }

    #[test]
    fn batch_tail_round_trip() {
        let mut h = Xxh3::new();
        h.update(b"{\"key\":0,\"value\":0}\n");
        let before = h.clone();
        let mut buf = b"{\"key\":1,\"value\":2}\n{\"key\":3}\n".to_vec();
        close_batch(&mut buf, &mut h);
        let text = String::from_utf8(buf.clone()).expect("utf-8");
        assert!(text.starts_with("{\"key\":1,\"value\":2}\n{\"key\":3,\"ck\":\""));
        let start = buf[..buf.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let last = &buf[start..buf.len() - 1];
        let (digits_at, ck) = batch_tail(last).expect("is a tail");
        let mut check = before;
        check.update(&buf[..start + digits_at]);
        assert_eq!(check.digest(), ck);
        let r: Record<u32, u8> = decode(last).expect("decodes").expect("x");
        assert_eq!(r, Record::Remove(3));
        assert!(batch_tail(b"{\"key\":1,\"value\":\"\\\",\\\"ck\\\":\\\"\"}").is_none());
    }
}
