//! The order `dump` prints keys in: a total order on JSON keys, the same bytes out for the
//! same data whatever wrote it.
//!
//! - Between types: `null` < `false` < `true` < numbers < strings < arrays < objects.
//! - Numbers by their exact decimal value (`2` < `10` < `1e2`, `-1` < `0`, big integers
//!   exact); numbers of equal value but different text (`1`, `1.0`) by their text.
//! - Strings by the UTF-8 bytes of the text they decode to, as Rust's `String` orders
//!   (`"\u00e9"` and `"é"` are one key).
//! - Arrays element by element, a prefix first; objects member by member in the order
//!   written, each member by its name, then its value.
//! - Two keys that tie on all of the above (only numbers written differently) by their
//!   canonical text, so that no two different keys tie.
//!
//! Each key becomes one byte string ([`sort_key`]) whose byte order is that order, so
//! that `dump` holds one compact string per live key and a `BTreeMap` does the sorting.

use crate::json::JsonKey;

/// A JSON number as sign, significant digits and the power of ten of the first digit:
/// the value is `0.DIGITS × 10^point`, negated if `negative`. Zero has no digits.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    point: i64,
}

impl Decimal {
    fn parse(text: &str) -> Decimal {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, "0"),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        // An exponent beyond any real use saturates; such numbers then compare by digits.
        let exp_neg = exp.starts_with('-');
        let mut e: i64 = 0;
        for d in exp.bytes().filter(u8::is_ascii_digit) {
            e = e.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        }
        let e = if exp_neg { -e } else { e }.clamp(-(1 << 60), 1 << 60);
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
        let len = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let mut point = e + len(int.len());
        let lead = digits.iter().take_while(|&&d| d == b'0').count();
        digits.drain(..lead);
        point -= len(lead);
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        if digits.is_empty() {
            return Decimal {
                negative: false,
                digits,
                point: 0,
            };
        }
        Decimal {
            negative,
            digits,
            point,
        }
    }
}

/// The byte string that sorts `key` (see the module): a byte per piece of the key in the
/// order its text holds it (a nested array or object ends with a byte that sorts before
/// any value, so a prefix sorts first), numbers and strings encoded so that their bytes
/// sort as they do, then a 0 byte and the canonical text, which breaks ties. Two keys are
/// equal exactly when their sort keys are.
pub(crate) fn sort_key(key: &JsonKey) -> Box<[u8]> {
    let canonical = key.canonical();
    let mut out = Vec::with_capacity(canonical.len() * 2 + 8);
    pieces(canonical, &mut out);
    out.push(0);
    out.extend_from_slice(canonical.as_bytes());
    out.into_boxed_slice()
}

const CLOSE: u8 = 1;
const NULL: u8 = 2;
const FALSE: u8 = 3;
const TRUE: u8 = 4;
const NUMBER: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

impl Decimal {
    /// A class byte (negative, zero, positive), then for the magnitude the power of ten
    /// (8 bytes, big-endian, sign bit flipped) and the digits ended by a 0 byte; every
    /// byte of a negative number's magnitude inverted, so that a larger one sorts first.
    fn encode(&self, out: &mut Vec<u8>) {
        if self.digits.is_empty() {
            out.push(2);
            return;
        }
        out.push(if self.negative { 1 } else { 3 });
        let start = out.len();
        #[allow(clippy::cast_sign_loss)] // the two's complement bits, on purpose
        let point = (self.point as u64) ^ (1 << 63);
        out.extend_from_slice(&point.to_be_bytes());
        out.extend_from_slice(&self.digits);
        out.push(0);
        if self.negative {
            for b in &mut out[start..] {
                *b = !*b;
            }
        }
    }
}

/// Appends the pieces of the valid JSON text `text` to `out`, read without recursion.
fn pieces(text: &str, out: &mut Vec<u8>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => i += 1,
            b'[' => {
                out.push(ARRAY);
                i += 1;
            }
            b'{' => {
                out.push(OBJECT);
                i += 1;
            }
            b']' | b'}' => {
                out.push(CLOSE);
                i += 1;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                out.push(STRING);
                // A 0 byte becomes 0 255 and the string ends with 0 0: a prefix sorts
                // first, and the bytes compare as the strings' bytes do.
                for c in unescape(&text[i + 1..j.min(b.len())]) {
                    out.push(c);
                    if c == 0 {
                        out.push(255);
                    }
                }
                out.extend_from_slice(&[0, 0]);
                i = j + 1;
            }
            b'n' => {
                out.push(NULL);
                i += 4;
            }
            b't' => {
                out.push(TRUE);
                i += 4;
            }
            b'f' => {
                out.push(FALSE);
                i += 5;
            }
            _ => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                if i == start {
                    i += 1; // not JSON; the canonical text decides
                } else {
                    out.push(NUMBER);
                    Decimal::parse(&text[start..i]).encode(out);
                }
            }
        }
    }
}

/// The bytes of the text a JSON string's body (between its quotes) decodes to, in UTF-8;
/// a lone surrogate escape becomes the three bytes UTF-8 would give its code point
/// (WTF-8), so that every string has a place.
fn unescape(body: &str) -> Vec<u8> {
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |at: usize| {
        body.get(at..at + 4)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let esc = b.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let c = match esc {
            b'n' => u32::from(b'\n'),
            b't' => u32::from(b'\t'),
            b'r' => u32::from(b'\r'),
            b'b' => 0x08,
            b'f' => 0x0c,
            b'u' => {
                let Some(mut c) = hex(i) else { continue };
                i += 4;
                if (0xd800..0xdc00).contains(&c) && b.get(i..i + 2) == Some(b"\\u") {
                    if let Some(lo) = hex(i + 2).filter(|lo| (0xdc00..0xe000).contains(lo)) {
                        c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
                        i += 6;
                    }
                }
                c
            }
            other => u32::from(other),
        };
        push_wtf8(&mut out, c);
    }
    out
}

fn push_wtf8(out: &mut Vec<u8>, c: u32) {
    #[allow(clippy::cast_possible_truncation)] // each byte masked to its bits
    match c {
        0..=0x7f => out.push(c as u8),
        0x80..=0x7ff => out.extend([0xc0 | (c >> 6) as u8, 0x80 | (c & 0x3f) as u8]),
        0x800..=0xffff => out.extend([
            0xe0 | (c >> 12) as u8,
            0x80 | ((c >> 6) & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ]),
        _ => out.extend([
            0xf0 | (c >> 18) as u8,
            0x80 | ((c >> 12) & 0x3f) as u8,
            0x80 | ((c >> 6) & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse_arg;
    use std::cmp::Ordering;

    fn sorted(s: &str) -> Box<[u8]> {
        sort_key(&JsonKey::new(parse_arg(s, "KEY").expect("json")))
    }

    #[test]
    fn keys_sort_by_type_then_value() {
        let order = [
            "null",
            "false",
            "true",
            "-1e3",
            "-2",
            "-1.5",
            "-0.0",
            "0",
            "1",
            "1.0",
            "1e0",
            "2",
            "10",
            "1e2",
            "18446744073709551615",
            "18446744073709551616",
            "1e400",
            "\"\"",
            "\"A\"",
            "\"a\"",
            "\"ab\"",
            "\"\\u00e9\"",
            "\"\\ud800\"",
            "\"\u{ffff}\"",
            "\"\\ud83d\\ude00\"",
            "[]",
            "[null]",
            "[1]",
            "[1,2]",
            "[1,[2]]",
            "[2]",
            "[\"a\"]",
            "[[]]",
            "{}",
            "{\"a\":1}",
            "{\"a\":1,\"b\":0}",
            "{\"a\":2}",
            "{\"b\":0}",
        ];
        let keys: Vec<Box<[u8]>> = order.iter().map(|s| sorted(s)).collect();
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(a.cmp(b), i.cmp(&j), "{} vs {}", order[i], order[j]);
            }
        }
        // One key, two spellings: one sort key, as the keys are equal.
        assert_eq!(sorted("\"\\u00e9\"").cmp(&sorted("é")), Ordering::Equal);
        assert_eq!(sorted("-0").cmp(&sorted("0")), Ordering::Less, "by text");
        assert!(sorted("\"a\"") < sorted("\"a\\u0000\""));
        assert!(sorted("\"a\\u0000\"") < sorted("\"a\\u0001\""));
        assert!(sorted("[\"a\"]") < sorted("[\"a\",null]"));
        assert!(sorted("-10") < sorted("-9.5") && sorted("-9.5") < sorted("-9"));
        assert!(sorted("-1e-5") < sorted("0") && sorted("0") < sorted("1e-5"));
    }
}
