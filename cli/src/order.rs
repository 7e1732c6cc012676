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

use std::cmp::Ordering;

use crate::json::JsonKey;

/// One piece of a key, in the order the key's text holds it: comparing two keys' pieces
/// one by one compares the keys as the module says (a nested array ends with `Close`,
/// which sorts first, so a prefix sorts before what extends it).
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Close,
    Null,
    False,
    True,
    Number(Decimal),
    String(Vec<u8>),
    Array,
    Object,
}

impl Piece {
    fn rank(&self) -> u8 {
        match self {
            Piece::Close => 0,
            Piece::Null => 1,
            Piece::False => 2,
            Piece::True => 3,
            Piece::Number(_) => 4,
            Piece::String(_) => 5,
            Piece::Array => 6,
            Piece::Object => 7,
        }
    }
}

impl Ord for Piece {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Piece::Number(a), Piece::Number(b)) => a.cmp(b),
            (Piece::String(a), Piece::String(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Piece {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

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

    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal || self.sign() == 0 {
            return by_sign;
        }
        // Both of one sign: compare magnitudes, then turn the result for negatives.
        let magnitude = self
            .point
            .cmp(&other.point)
            .then_with(|| self.digits.cmp(&other.digits));
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A key with what it sorts by.
#[derive(Debug)]
pub(crate) struct Sorted {
    pieces: Vec<Piece>,
    canonical: Box<str>,
}

impl Sorted {
    pub(crate) fn new(key: &JsonKey) -> Sorted {
        let canonical = key.canonical();
        Sorted {
            pieces: pieces(canonical),
            canonical: canonical.into(),
        }
    }
}

impl PartialEq for Sorted {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Sorted {}

impl Ord for Sorted {
    fn cmp(&self, other: &Self) -> Ordering {
        self.pieces
            .cmp(&other.pieces)
            .then_with(|| self.canonical.cmp(&other.canonical))
    }
}

impl PartialOrd for Sorted {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The pieces of the valid JSON text `text`, read without recursion.
fn pieces(text: &str) -> Vec<Piece> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => i += 1,
            b'[' => {
                out.push(Piece::Array);
                i += 1;
            }
            b'{' => {
                out.push(Piece::Object);
                i += 1;
            }
            b']' | b'}' => {
                out.push(Piece::Close);
                i += 1;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                out.push(Piece::String(unescape(&text[i + 1..j.min(b.len())])));
                i = j + 1;
            }
            b'n' => {
                out.push(Piece::Null);
                i += 4;
            }
            b't' => {
                out.push(Piece::True);
                i += 4;
            }
            b'f' => {
                out.push(Piece::False);
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
                    out.push(Piece::Number(Decimal::parse(&text[start..i])));
                }
            }
        }
    }
    out
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

    fn sorted(s: &str) -> Sorted {
        Sorted::new(&JsonKey::new(parse_arg(s, "KEY").expect("json")))
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
        let keys: Vec<Sorted> = order.iter().map(|s| sorted(s)).collect();
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(a.cmp(b), i.cmp(&j), "{} vs {}", order[i], order[j]);
            }
        }
        // One key, two spellings: a tie, as the keys are equal.
        assert_eq!(sorted("\"\\u00e9\"").cmp(&sorted("é")), Ordering::Equal);
        assert_eq!(sorted("-0").cmp(&sorted("0")), Ordering::Less, "by text");
    }
}
