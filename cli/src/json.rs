//! Keys and values as the tool holds them: their exact JSON text, so that nothing it
//! rewrites (`compact`, `repair`, `set` of another key) changes a byte of them.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A value: its JSON text, kept as it was read or typed (whitespace outside strings
/// removed from typed ones).
pub(crate) type Json = Box<RawValue>;

/// A key of any JSON type. `serde_json::Value` is not `Hash`, and comparing text would
/// make `"\u00e9"` (as Python writes it) and `"é"` (as Rust writes it) two keys; so a key
/// keeps its text for writing and compares and hashes a canonical form of it: no
/// whitespace outside strings, every string written as `serde_json` writes it. Numbers
/// compare by their text (`1` and `1.0` are different keys, as in a typed Rust key).
#[derive(Debug, Clone)]
pub(crate) struct JsonKey {
    text: Json,
    canonical: Box<str>,
}

impl JsonKey {
    pub(crate) fn new(text: Json) -> Self {
        let canonical = canonical(text.get()).into_boxed_str();
        JsonKey { text, canonical }
    }

    pub(crate) fn text(&self) -> &str {
        self.text.get()
    }

    /// The form it compares and hashes by.
    pub(crate) fn canonical(&self) -> &str {
        &self.canonical
    }
}

impl PartialEq for JsonKey {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for JsonKey {}

impl Hash for JsonKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.canonical.hash(state);
    }
}

impl Serialize for JsonKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Json::deserialize(d).map(JsonKey::new)
    }
}

/// Calls `token(is_string, bytes)` for each piece of the valid JSON text `text`: the
/// strings (quotes included) and the runs of other bytes, whitespace outside strings left
/// out.
fn tokens(text: &str, mut token: impl FnMut(bool, &str)) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let end = (j + 1).min(b.len());
                token(true, &text[i..end]);
                i = end;
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | b'"') {
                    i += 1;
                }
                token(false, &text[start..i]);
            }
        }
    }
}

/// `text` without whitespace outside strings (so a typed value never spans lines).
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    tokens(text, |_, t| out.push_str(t));
    out
}

fn canonical(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    tokens(text, |is_string, t| {
        // A string that is not valid Unicode (a lone surrogate escape) stays as written.
        match is_string
            .then(|| serde_json::from_str::<String>(t).ok())
            .flatten()
        {
            Some(s) => match serde_json::to_string(&s) {
                Ok(t) => out.push_str(&t),
                Err(_) => out.push_str(t),
            },
            None => out.push_str(t),
        }
    });
    out
}

/// A command-line argument as JSON: JSON text if it parses as JSON, otherwise, for a bare
/// word, that word as a string. Text that starts like JSON (`{`, `[`, `"`) but does not
/// parse is refused rather than stored as a string by mistake.
pub(crate) fn parse_arg(arg: &str, what: &str) -> Result<Json, String> {
    let trimmed = arg.trim();
    match serde_json::from_str::<Json>(trimmed) {
        Ok(_) => RawValue::from_string(minify(trimmed)).map_err(|e| e.to_string()),
        Err(e) if trimmed.starts_with(['{', '[', '"']) => Err(format!(
            "{what} {arg:?} is not valid JSON ({e}); a bare word is taken as a string, \
             but text that starts with {{, [ or \" must be JSON"
        )),
        Err(_) => serde_json::to_string(arg)
            .and_then(RawValue::from_string)
            .map_err(|e| e.to_string()),
    }
}

/// Any JSON value, read as a typed program reads it, keeping nothing: `serde_json` parses
/// every number (and refuses one beyond the range of `f64`, such as `1e400`) and every
/// string (and refuses a lone surrogate escape), and counts the nesting against its
/// recursion limit; an object may not repeat a key (a struct refuses it, a map keeps only
/// the last). Used as the value type of `check` and `repair`, and to test a typed `KEY`
/// or `VALUE`, so that the tool calls clean, and writes, only what reads back.
#[derive(Debug)]
pub(crate) struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ReadableVisitor)
    }
}

struct ReadableVisitor;

impl<'de> Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_none<E: de::Error>(self) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Readable, D::Error> {
        Readable::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            map.next_value::<Readable>()?;
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format_args!(
                    "the key {k:?} appears twice in one object (a struct refuses it, a map \
                     keeps only the last)"
                )));
            }
        }
        Ok(Readable)
    }
}

/// A key for `check` and `repair`: a [`JsonKey`] whose text is also [`Readable`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ReadableKey(pub(crate) JsonKey);

impl<'de> Deserialize<'de> for ReadableKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = JsonKey::deserialize(d)?;
        readable(key.text()).map_err(|e| de::Error::custom(format_args!("the key: {e}")))?;
        Ok(ReadableKey(key))
    }
}

/// Whether the JSON text `text`, as a key or value of a record, reads back in a typed
/// program (see [`Readable`]). It is read inside one array, which takes the place of the
/// record's object, so that the nesting is counted as the reader counts it in the file.
pub(crate) fn readable(text: &str) -> Result<(), String> {
    let wrapped = format!("[{text}]");
    let mut de = serde_json::Deserializer::from_str(&wrapped);
    let r = Readable::deserialize(&mut de).and_then(|_| de.end());
    r.map_err(|e| {
        // The position is in the wrapped text: leave it out.
        let msg = e.to_string();
        match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_owned(),
            None => msg,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Result<JsonKey, String> {
        parse_arg(s, "KEY").map(JsonKey::new)
    }

    #[test]
    fn bare_words_are_strings_and_json_stays_json() -> Result<(), String> {
        assert_eq!(key("hello")?.text(), "\"hello\"");
        assert_eq!(key("hello world")?.text(), "\"hello world\"");
        assert_eq!(key("NaN")?.text(), "\"NaN\"");
        assert_eq!(key("12")?.text(), "12");
        assert_eq!(key("true")?.text(), "true");
        assert_eq!(key("[\"tuple\", 1]")?.text(), "[\"tuple\",1]");
        assert_eq!(key(" {\"a\":\n 1} ")?.text(), "{\"a\":1}");
        assert!(key("[1, 2").is_err());
        assert!(key("\"open").is_err());
        Ok(())
    }

    #[test]
    fn keys_compare_by_canonical_text() -> Result<(), String> {
        assert_eq!(key("\"\\u00e9\"")?, key("é")?);
        assert_eq!(
            key("[\"a\", [1, \"\\n\"]]")?,
            key("[\"a\",[1,\"\\u000a\"]]")?
        );
        assert_ne!(key("1")?, key("1.0")?);
        assert_ne!(key("1")?, key("\"1\"")?);
        assert_eq!(key("\"a b\"")?, key("a b")?);
        Ok(())
    }

    #[test]
    fn readable_is_what_a_typed_reader_reads_in_a_record() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        for ok in [
            "1",
            "-0.0",
            "1e308",
            "18446744073709551616",
            "\"\\u00e9\"",
            "{\"a\": [1, {\"a\": 2}]}",
            &nested(126),
        ] {
            assert_eq!(readable(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("1e400", "number out of range"),
            ("[-1e309]", "number out of range"),
            ("{\"a\": 1, \"\\u0061\": 2}", "appears twice"),
            ("\"\\ud800\"", ""),
            (&nested(127), "recursion limit exceeded"),
        ] {
            let e = readable(bad).expect_err(bad);
            assert!(e.contains(why) && !e.contains(" at line "), "{bad}: {e}");
        }
        // The same limit as the reader's, counted in a whole record line.
        let line = |n| format!("{{\"key\":1,\"value\":{}}}", nested(n));
        assert!(serde_json::from_str::<serde_json::Value>(&line(126)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&line(127)).is_err());
    }

    #[test]
    fn big_integers_keep_their_digits() -> Result<(), String> {
        let k = key("[1180591620717411303424, 1]")?;
        assert_eq!(k.text(), "[1180591620717411303424,1]");
        assert_ne!(k, key("[1180591620717411303425, 1]")?);
        Ok(())
    }
}
