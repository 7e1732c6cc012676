//! Test data, a small PRNG, a latency histogram and /proc helpers.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The typed value stored under every key: about 100 bytes of JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Val {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub score: u32,
    pub tags: Vec<String>,
    pub active: bool,
}

/// `k%08d`
pub fn key(i: u64) -> String {
    format!("k{i:08}")
}

/// A deterministic value for key `i` at generation `generation`.
pub fn val(i: u64, generation: u64) -> Val {
    Val {
        id: i,
        name: format!("user {i:08}"),
        email: format!("user{i:08}@example.org"),
        score: u32::try_from((i.wrapping_mul(2_654_435_761) ^ generation) % 100_000).unwrap_or(0),
        tags: vec!["alpha".to_owned(), format!("g{}", generation % 1000)],
        active: !(i + generation).is_multiple_of(3),
    }
}

/// The NDJSON record ptvp35 writes for a set, used by the limits.
#[derive(Serialize, Deserialize)]
pub struct Record<V> {
    pub key: String,
    pub value: V,
}

/// xorshift64*: enough to spread keys, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Log-linear latency histogram over nanoseconds: 16 sub-buckets per power of two
/// (at most ~6% error on a percentile), exact maximum.
#[derive(Clone)]
pub struct Hist {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

const SUB: u32 = 16;

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: vec![0; 64 * SUB as usize],
            count: 0,
            max: 0,
        }
    }
}

impl Hist {
    fn index(v: u64) -> usize {
        if v < u64::from(SUB) {
            return usize::try_from(v).unwrap_or(0);
        }
        let exp = 63 - v.leading_zeros(); // >= 4
        let mant = (v >> (exp - 4)) & u64::from(SUB - 1);
        (exp - 3) as usize * SUB as usize + usize::try_from(mant).unwrap_or(0)
    }
    fn upper(idx: usize) -> u64 {
        let sub = SUB as usize;
        if idx < sub {
            return idx as u64;
        }
        let exp = (idx / sub) as u32 + 3;
        let mant = (idx % sub) as u64;
        ((u64::from(SUB) + mant + 1) << (exp - 4)) - 1
    }
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Self::index(ns)] += 1;
        self.count += 1;
        self.max = self.max.max(ns);
    }
    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.max = self.max.max(o.max);
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Percentile in seconds (`q` in 0..=1).
    pub fn pct(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return Self::upper(i).min(self.max) as f64 * 1e-9;
            }
        }
        self.max as f64 * 1e-9
    }
    pub fn max_secs(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.max as f64 * 1e-9
        }
    }
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
pub fn proc_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Sum of file lengths under `p`.
pub fn tree_size(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if md.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
            .unwrap_or(0)
    } else {
        md.len()
    }
}

/// fsync a directory (makes a rename or a create inside it durable).
pub fn sync_dir(p: &Path) -> std::io::Result<()> {
    File::open(p)?.sync_all()
}

/// Median, min, max of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub med: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Summary {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary {
                med: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let med = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            med,
            min: v[0],
            max: v[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_about_100_bytes() {
        let n = serde_json::to_string(&val(12_345, 7)).unwrap().len();
        assert!((90..=120).contains(&n), "{n}");
    }

    #[test]
    fn hist_percentiles_are_close() {
        let mut h = Hist::default();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i));
        }
        let p50 = h.pct(0.5);
        assert!((p50 - 500e-6).abs() / 500e-6 < 0.07, "{p50}");
        assert!((h.max_secs() - 1e-3).abs() < 1e-9);
        for v in [0u64, 1, 15, 16, 17, 31, 32, 1000, 123_456_789] {
            assert!(Hist::upper(Hist::index(v)) >= v, "{v}");
        }
    }
}
