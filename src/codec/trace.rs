//! A structural digest of a value: every event its `Serialize` emits, hashed into 64 bits,
//! so that a value and the value its JSON reads back as can be compared without
//! `PartialEq` and without allocating.
//!
//! The digest covers the serde data model, not the JSON text: which method was called
//! (`serialize_none` and `serialize_some(&())` differ, though `serde_json` writes `null`
//! for both), the names of structs, fields and variants, variant indexes, each primitive
//! bit for bit (`-0.0` is not `0.0`), the integer width, and the nesting. Two values whose
//! digests differ are different values; so a value whose read-back copy digests otherwise
//! does not read back as itself.
//!
//! Sequences and maps are digested as multisets (the wrapping sum of their elements'
//! digests, and the count): a `HashMap` or `HashSet` read back iterates in another order
//! and is still the same value. JSON keeps the order of arrays and objects, so a type that
//! cares about order reads it back in the order written anyway.
//!
//! Non-finite floats are refused here with a clear reason: JSON cannot hold them and
//! `serde_json` writes `null` in their place.

use std::fmt;

use serde::ser::{self, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Why a value was refused while it was traced.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl ser::Error for Refused {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refused(msg.to_string())
    }
}

/// The digest of every serde event of `x`; fails on a non-finite float or if `x`'s own
/// `Serialize` fails.
pub(crate) fn digest<T: ?Sized + Serialize>(x: &T) -> Result<u64, Refused> {
    x.serialize(Trace)
}

/// One tag per kind of event, used as a hash seed, so that equal payloads of different
/// kinds (`1u8` and `1u16`, `"a"` as a string and as a field name) digest apart.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Tag {
    Bool = 1,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    None,
    Some,
    Unit,
    UnitStruct,
    UnitVariant,
    NewtypeStruct,
    NewtypeVariant,
    Seq,
    Tuple,
    TupleStruct,
    TupleVariant,
    Map,
    Entry,
    Struct,
    StructVariant,
    Field,
    Skipped,
    Name,
}

fn bytes(tag: Tag, b: &[u8]) -> u64 {
    xxh3_64_with_seed(b, tag as u64)
}

/// Folded 64×64→128-bit multiply (wyhash's `mum`): a strong, cheap mix of two words. Not
/// symmetric (the two constants differ), so `mix(a, b)` and `mix(b, a)` differ.
fn mix(a: u64, b: u64) -> u64 {
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    let m = u128::from(a ^ P0) * u128::from(b ^ P1);
    #[allow(clippy::cast_possible_truncation)] // the two halves, folded
    let (lo, hi) = (m as u64, (m >> 64) as u64);
    lo ^ hi
}

fn word(tag: Tag, w: u64) -> u64 {
    mix(tag as u64, w)
}

/// Ordered combination: `then(then(a, b), c)` differs from `then(then(a, c), b)`.
fn then(state: u64, next: u64) -> u64 {
    mix(state, next)
}

fn name(n: &str) -> u64 {
    bytes(Tag::Name, n.as_bytes())
}

fn variant(tag: Tag, ty: &str, index: u32, v: &str) -> u64 {
    then(
        then(then(word(tag, 0), name(ty)), u64::from(index)),
        name(v),
    )
}

fn float(tag: Tag, v: f64, bits: u64) -> Result<u64, Refused> {
    if v.is_finite() {
        Ok(word(tag, bits))
    } else {
        Err(Refused(format!(
            "{v} is not a finite number and cannot be stored in JSON"
        )))
    }
}

type R = Result<u64, Refused>;

/// A scalar of up to 128 bits, as a word pair mixed under its tag.
trait Wide {
    fn halves(self) -> (u64, u64);
}
impl Wide for u64 {
    fn halves(self) -> (u64, u64) {
        (self, 0)
    }
}
impl Wide for i64 {
    fn halves(self) -> (u64, u64) {
        (self.cast_unsigned(), 0)
    }
}
impl Wide for u128 {
    #[allow(clippy::cast_possible_truncation)] // the two halves
    fn halves(self) -> (u64, u64) {
        (self as u64, (self >> 64) as u64)
    }
}
impl Wide for i128 {
    fn halves(self) -> (u64, u64) {
        self.cast_unsigned().halves()
    }
}
impl Wide for u32 {
    fn halves(self) -> (u64, u64) {
        (u64::from(self), 0)
    }
}

fn wide<W: Wide>(tag: Tag, w: W) -> u64 {
    let (lo, hi) = w.halves();
    then(word(tag, lo), hi)
}

struct Trace;

/// A compound whose fields digest in order (tuples, structs, variants).
struct Ordered(u64);

/// A compound whose elements digest as a multiset (sequences, maps).
struct Unordered {
    header: u64,
    sum: u64,
    count: u64,
    /// The digest of a map entry's key, until its value comes.
    key: u64,
}

impl Unordered {
    fn new(tag: Tag) -> Self {
        Unordered {
            header: word(tag, 0),
            sum: 0,
            count: 0,
            key: 0,
        }
    }
    fn add(&mut self, d: u64) {
        self.sum = self.sum.wrapping_add(d);
        self.count += 1;
    }
    fn finish(&self) -> u64 {
        then(then(self.header, self.count), self.sum)
    }
}

macro_rules! scalar {
    ($($m:ident: $t:ty => $tag:ident as $w:ty),* $(,)?) => {$(
        fn $m(self, v: $t) -> R {
            // Sign-extended or widened: the tag keeps the widths apart.
            Ok(wide(Tag::$tag, <$w>::from(v)))
        }
    )*};
}

impl ser::Serializer for Trace {
    type Ok = u64;
    type Error = Refused;
    type SerializeSeq = Unordered;
    type SerializeTuple = Ordered;
    type SerializeTupleStruct = Ordered;
    type SerializeTupleVariant = Ordered;
    type SerializeMap = Unordered;
    type SerializeStruct = Ordered;
    type SerializeStructVariant = Ordered;

    scalar!(
        serialize_i8: i8 => I8 as i64, serialize_i16: i16 => I16 as i64,
        serialize_i32: i32 => I32 as i64, serialize_i64: i64 => I64 as i64,
        serialize_i128: i128 => I128 as i128, serialize_u8: u8 => U8 as u64,
        serialize_u16: u16 => U16 as u64, serialize_u32: u32 => U32 as u64,
        serialize_u64: u64 => U64 as u64, serialize_u128: u128 => U128 as u128,
        serialize_char: char => Char as u32,
    );

    fn serialize_bool(self, v: bool) -> R {
        Ok(word(Tag::Bool, u64::from(v)))
    }
    fn serialize_f32(self, v: f32) -> R {
        float(Tag::F32, f64::from(v), u64::from(v.to_bits()))
    }
    fn serialize_f64(self, v: f64) -> R {
        float(Tag::F64, v, v.to_bits())
    }
    fn serialize_str(self, v: &str) -> R {
        Ok(bytes(Tag::Str, v.as_bytes()))
    }
    fn serialize_bytes(self, v: &[u8]) -> R {
        Ok(bytes(Tag::Bytes, v))
    }
    fn serialize_none(self) -> R {
        Ok(word(Tag::None, 0))
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> R {
        Ok(then(word(Tag::Some, 0), v.serialize(Trace)?))
    }
    fn serialize_unit(self) -> R {
        Ok(word(Tag::Unit, 0))
    }
    fn serialize_unit_struct(self, n: &'static str) -> R {
        Ok(then(word(Tag::UnitStruct, 0), name(n)))
    }
    fn serialize_unit_variant(self, n: &'static str, i: u32, v: &'static str) -> R {
        Ok(variant(Tag::UnitVariant, n, i, v))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, n: &'static str, v: &T) -> R {
        Ok(then(
            then(word(Tag::NewtypeStruct, 0), name(n)),
            v.serialize(Trace)?,
        ))
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        n: &'static str,
        i: u32,
        var: &'static str,
        v: &T,
    ) -> R {
        Ok(then(
            variant(Tag::NewtypeVariant, n, i, var),
            v.serialize(Trace)?,
        ))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Unordered, Refused> {
        Ok(Unordered::new(Tag::Seq))
    }
    fn serialize_tuple(self, _: usize) -> Result<Ordered, Refused> {
        Ok(Ordered(word(Tag::Tuple, 0)))
    }
    fn serialize_tuple_struct(self, n: &'static str, _: usize) -> Result<Ordered, Refused> {
        Ok(Ordered(then(word(Tag::TupleStruct, 0), name(n))))
    }
    fn serialize_tuple_variant(
        self,
        n: &'static str,
        i: u32,
        v: &'static str,
        _: usize,
    ) -> Result<Ordered, Refused> {
        Ok(Ordered(variant(Tag::TupleVariant, n, i, v)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Unordered, Refused> {
        Ok(Unordered::new(Tag::Map))
    }
    fn serialize_struct(self, n: &'static str, _: usize) -> Result<Ordered, Refused> {
        Ok(Ordered(then(word(Tag::Struct, 0), name(n))))
    }
    fn serialize_struct_variant(
        self,
        n: &'static str,
        i: u32,
        v: &'static str,
        _: usize,
    ) -> Result<Ordered, Refused> {
        Ok(Ordered(variant(Tag::StructVariant, n, i, v)))
    }
}

macro_rules! ordered {
    ($tr:ident, $m:ident) => {
        impl ser::$tr for Ordered {
            type Ok = u64;
            type Error = Refused;
            fn $m<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Refused> {
                self.0 = then(self.0, v.serialize(Trace)?);
                Ok(())
            }
            fn end(self) -> R {
                Ok(self.0)
            }
        }
    };
}
ordered!(SerializeTuple, serialize_element);
ordered!(SerializeTupleStruct, serialize_field);
ordered!(SerializeTupleVariant, serialize_field);

macro_rules! fields {
    ($tr:ident) => {
        impl ser::$tr for Ordered {
            type Ok = u64;
            type Error = Refused;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                n: &'static str,
                v: &T,
            ) -> Result<(), Refused> {
                let field = then(bytes(Tag::Field, n.as_bytes()), v.serialize(Trace)?);
                self.0 = then(self.0, field);
                Ok(())
            }
            fn skip_field(&mut self, n: &'static str) -> Result<(), Refused> {
                self.0 = then(self.0, bytes(Tag::Skipped, n.as_bytes()));
                Ok(())
            }
            fn end(self) -> R {
                Ok(self.0)
            }
        }
    };
}
fields!(SerializeStruct);
fields!(SerializeStructVariant);

impl ser::SerializeSeq for Unordered {
    type Ok = u64;
    type Error = Refused;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Refused> {
        let d = v.serialize(Trace)?;
        self.add(d);
        Ok(())
    }
    fn end(self) -> R {
        Ok(self.finish())
    }
}

impl ser::SerializeMap for Unordered {
    type Ok = u64;
    type Error = Refused;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> Result<(), Refused> {
        self.key = k.serialize(Trace)?;
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Refused> {
        let entry = then(then(word(Tag::Entry, 0), self.key), v.serialize(Trace)?);
        self.add(entry);
        Ok(())
    }
    fn end(self) -> R {
        Ok(self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    fn d<T: Serialize>(x: &T) -> u64 {
        digest(x).expect("digests")
    }

    #[test]
    fn tells_apart_what_json_writes_alike() {
        assert_ne!(d(&Some(None::<u8>)), d(&None::<Option<u8>>));
        assert_ne!(d(&Some(())), d(&None::<()>));
        assert_ne!(d(&0.0f64), d(&-0.0f64));
        assert_ne!(d(&1u8), d(&1u16));
        assert_ne!(d(&(1, 2)), d(&(2, 1)));
        assert_ne!(d(&"ab"), d(&'a'));
        assert_ne!(d(&vec![1, 1, 2]), d(&vec![1, 2, 2]));
        assert_ne!(d(&vec![1, 2]), d(&vec![1, 2, 0]));
        assert_eq!(d(&vec!["x", "y"]), d(&vec!["x", "y"]));
    }

    #[test]
    fn unordered_collections_digest_alike_in_any_order() {
        let up: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let down: HashMap<String, u32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(d(&up), d(&down));
        let sorted: BTreeMap<String, u32> = up.clone().into_iter().collect();
        assert_eq!(d(&up), d(&sorted));
        let mut changed = up.clone();
        changed.insert("k3".into(), 4);
        assert_ne!(d(&up), d(&changed));
        let set_up: HashSet<u32> = (0..20).collect();
        let set_down: HashSet<u32> = (0..20).rev().collect();
        assert_eq!(d(&set_up), d(&set_down));
    }

    #[test]
    fn refuses_non_finite_floats() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = digest(&vec![Some(1.0), Some(v)]).expect_err("refused");
            assert!(e.0.contains("not a finite number"), "{e}");
        }
        assert!(digest(&f32::NAN).is_err());
    }
}
