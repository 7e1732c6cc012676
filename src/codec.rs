//! One NDJSON line <-> one record, and the checksum tail that closes a batch. Pure, no I/O.
//!
//! A set is `{"key":K,"value":V}`, a removal `{"key":K}` (no `"value"` field, so no value,
//! not even `null`, can be mistaken for it). The last line of every batch the writer
//! appends carries one more field, `"ck"`, holding the XXH3-64 of every byte of the file
//! before its digits; see `docs/format.md` and `docs/recovery.md`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};

/// `,"ck":"` — what precedes the 16 hex digits of a batch checksum.
const CK_OPEN: &[u8] = b",\"ck\":\"";
/// Length of `,"ck":"` + 16 hex digits + `"}`.
pub(crate) const CK_SUFFIX_LEN: usize = CK_OPEN.len() + 16 + 2;

/// Appends `{"key":K,"value":V}\n` to `out`, or leaves `out` as it was and returns an error
/// if the key or the value cannot be stored faithfully.
pub(crate) fn encode_set<K: Serialize, V: Serialize>(
    key: &K,
    value: &V,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    let r = (|| {
        check_finite(key, "key")?;
        check_finite(value, "value")?;
        out.extend_from_slice(b"{\"key\":");
        write_json(key, "key", out)?;
        out.extend_from_slice(b",\"value\":");
        write_json(value, "value", out)?;
        out.extend_from_slice(b"}\n");
        Ok(())
    })();
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Appends `{"key":K}\n` (a removal) to `out`, or leaves it as it was on error.
pub(crate) fn encode_remove<K: Serialize>(key: &K, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    let r = (|| {
        check_finite(key, "key")?;
        out.extend_from_slice(b"{\"key\":");
        write_json(key, "key", out)?;
        out.extend_from_slice(b"}\n");
        Ok(())
    })();
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn write_json<T: Serialize>(x: &T, what: &'static str, out: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(&mut *out, x).map_err(|e| Error::Serialize {
        what,
        reason: e.to_string(),
    })
}

fn check_finite<T: Serialize>(x: &T, what: &'static str) -> Result<()> {
    x.serialize(finite::Checker)
        .map_err(|e| Error::Serialize { what, reason: e.0 })
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

/// The lines of `data` from `from` on that end in `\n`, each with its offset (the line
/// without its `\n`); bytes after the last `\n` are not a line.
pub(crate) fn lines(data: &[u8], from: usize) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = from;
    std::iter::from_fn(move || {
        let nl = data.get(pos..)?.iter().position(|&b| b == b'\n')?;
        let at = pos;
        pos += nl + 1;
        Some((at, &data[at..at + nl]))
    })
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

/// A serializer that writes nothing and fails on the first non-finite float: JSON has no
/// way to hold NaN or infinity (`serde_json` writes `null`, which does not read back).
mod finite {
    use serde::ser::{self, Serialize};
    use std::fmt;

    #[derive(Debug)]
    pub(super) struct Checker;

    #[derive(Debug)]
    pub(super) struct NotFinite(pub(super) String);

    impl fmt::Display for NotFinite {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for NotFinite {}
    impl ser::Error for NotFinite {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            NotFinite(msg.to_string())
        }
    }

    type R = Result<(), NotFinite>;

    fn float(v: f64) -> R {
        if v.is_finite() {
            Ok(())
        } else {
            Err(NotFinite(format!(
                "{v} is not a finite number and cannot be stored in JSON"
            )))
        }
    }

    macro_rules! ok {
        ($($name:ident: $t:ty),*) => { $(fn $name(self, _: $t) -> R { Ok(()) })* };
    }

    impl ser::Serializer for Checker {
        type Ok = ();
        type Error = NotFinite;
        type SerializeSeq = Self;
        type SerializeTuple = Self;
        type SerializeTupleStruct = Self;
        type SerializeTupleVariant = Self;
        type SerializeMap = Self;
        type SerializeStruct = Self;
        type SerializeStructVariant = Self;

        ok!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
            serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
            serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
            serialize_str: &str, serialize_bytes: &[u8], serialize_unit_struct: &'static str);

        fn serialize_f32(self, v: f32) -> R {
            float(f64::from(v))
        }
        fn serialize_f64(self, v: f64) -> R {
            float(v)
        }
        fn serialize_none(self) -> R {
            Ok(())
        }
        fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> R {
            v.serialize(self)
        }
        fn serialize_unit(self) -> R {
            Ok(())
        }
        fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
            Ok(())
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> R {
            v.serialize(self)
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            v: &T,
        ) -> R {
            v.serialize(self)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self, NotFinite> {
            Ok(self)
        }
        fn serialize_tuple(self, _: usize) -> Result<Self, NotFinite> {
            Ok(self)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, NotFinite> {
            Ok(self)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self, NotFinite> {
            Ok(self)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self, NotFinite> {
            Ok(self)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, NotFinite> {
            Ok(self)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self, NotFinite> {
            Ok(self)
        }
    }

    macro_rules! compound {
        ($tr:ident, $m:ident) => {
            impl ser::$tr for Checker {
                type Ok = ();
                type Error = NotFinite;
                fn $m<T: ?Sized + Serialize>(&mut self, v: &T) -> R {
                    v.serialize(Checker)
                }
                fn end(self) -> R {
                    Ok(())
                }
            }
        };
    }
    compound!(SerializeSeq, serialize_element);
    compound!(SerializeTuple, serialize_element);
    compound!(SerializeTupleStruct, serialize_field);
    compound!(SerializeTupleVariant, serialize_field);

    impl ser::SerializeMap for Checker {
        type Ok = ();
        type Error = NotFinite;
        fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> R {
            k.serialize(Checker)
        }
        fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> R {
            v.serialize(Checker)
        }
        fn end(self) -> R {
            Ok(())
        }
    }

    impl ser::SerializeStruct for Checker {
        type Ok = ();
        type Error = NotFinite;
        fn serialize_field<T: ?Sized + Serialize>(&mut self, _: &'static str, v: &T) -> R {
            v.serialize(Checker)
        }
        fn end(self) -> R {
            Ok(())
        }
    }

    impl ser::SerializeStructVariant for Checker {
        type Ok = ();
        type Error = NotFinite;
        fn serialize_field<T: ?Sized + Serialize>(&mut self, _: &'static str, v: &T) -> R {
            v.serialize(Checker)
        }
        fn end(self) -> R {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn set<K: Serialize, V: Serialize>(k: &K, v: &V) -> Result<String> {
        let mut out = Vec::new();
        encode_set(k, v, &mut out)?;
        Ok(String::from_utf8(out).expect("json is utf-8"))
    }

    #[test]
    fn encodes_sets_and_removals() -> Result<()> {
        assert_eq!(set(&"a", &1)?, "{\"key\":\"a\",\"value\":1}\n");
        assert_eq!(
            set(&("tuple", "example"), &None::<u8>)?,
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
        let e = encode_set(&"k", &vec![Some(1.0), Some(f64::NAN)], &mut out);
        assert!(matches!(e, Err(Error::Serialize { what: "value", .. })));
        assert_eq!(out, b"keep");
        assert!(encode_set(&"k", &Some(f32::INFINITY), &mut out).is_err());
        assert!(encode_set(&f64::NEG_INFINITY, &1, &mut out).is_err());
        assert_eq!(out, b"keep");
    }

    #[test]
    fn refuses_values_serde_json_cannot_write() {
        let mut m = HashMap::new();
        m.insert(vec![1u8], 2u8);
        let mut out = Vec::new();
        let e = encode_set(&"k", &m, &mut out);
        assert!(
            matches!(e, Err(Error::Serialize { what: "value", .. })),
            "{e:?}"
        );
        assert!(out.is_empty());
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
