//! The checksum chain of one incarnation of `P`: the one type that extends it, closes a
//! batch with it and finds how far a file's batches are vouched for.
//!
//! Each session and each rebuild starts a new chain at the count it writes to
//! `P.truncate`, seeded with a fresh salt stored beside that count, so bytes of an older
//! file or an older session never validate in a newer one (`docs/recovery.md`, "Batch
//! checksums"). A salt of 0 is a count written before salts existed (by this crate's
//! 0.1.0, or by the Python library): its chain is unseeded and covers the file from
//! offset 0, as it did then.

use xxhash_rust::xxh3::Xxh3;

use crate::codec;

/// XXH3-64 state over every byte of the chain so far.
#[derive(Clone)]
pub(crate) struct Chain(Xxh3);

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chain({:016x})", self.0.digest())
    }
}

impl Chain {
    /// A chain seeded with `salt`, over no bytes yet.
    pub(crate) fn new(salt: u64) -> Self {
        Chain(Xxh3::with_seed(salt))
    }

    /// Takes in bytes appended to the file.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Closes a batch: `buf` holds whole record lines, the last one ending in `}\n`; its
    /// `}\n` becomes `,"ck":"<16 hex>"}\n`, the digits spelling the chain's digest of
    /// every byte before them. On return the chain has taken in all of `buf`.
    pub(crate) fn close_batch(&mut self, buf: &mut Vec<u8>) {
        codec::close_batch(buf, &mut self.0);
    }

    /// The end of the last whole batch of `data` from `from` on whose checksum holds (or
    /// `from`), and the chain after it. The chain must have taken in everything before
    /// `from`.
    pub(crate) fn valid_end(mut self, data: &[u8], from: usize) -> (usize, Chain) {
        let mut accepted = (from, self.clone());
        let mut hashed_to = from;
        for line in codec::lines(data, from).filter(|l| l.complete) {
            let (pos, line) = (line.offset, line.bytes);
            if let Some((digits_at, ck)) = codec::batch_tail(line) {
                self.0.update(&data[hashed_to..pos + digits_at]);
                hashed_to = pos + digits_at;
                if self.0.digest() == ck {
                    let end = pos + line.len() + 1;
                    self.0.update(&data[hashed_to..end]);
                    hashed_to = end;
                    accepted = (end, self.clone());
                }
            }
        }
        accepted
    }
}

/// [`Chain::valid_end`] for a file read line by line instead of held whole: fed each
/// complete line in file order from the count on, it finds the same end and chain.
#[derive(Debug)]
pub(crate) struct Validator {
    chain: Chain,
    accepted: (usize, Chain),
}

impl Validator {
    /// Goes on from offset `from`; `chain` has taken in everything before it.
    pub(crate) fn new(chain: Chain, from: usize) -> Self {
        Validator {
            accepted: (from, chain.clone()),
            chain,
        }
    }

    /// Takes in the complete line at `offset` (`line` without its `\n`).
    pub(crate) fn line(&mut self, offset: usize, line: &[u8]) {
        if let Some((digits_at, ck)) = codec::batch_tail(line) {
            self.chain.extend(&line[..digits_at]);
            let holds = self.chain.0.digest() == ck;
            self.chain.extend(&line[digits_at..]);
            self.chain.extend(b"\n");
            if holds {
                self.accepted = (offset + line.len() + 1, self.chain.clone());
            }
        } else {
            self.chain.extend(line);
            self.chain.extend(b"\n");
        }
    }

    /// The end of the last whole batch whose checksum holds, and the chain after it.
    pub(crate) fn finish(self) -> (usize, Chain) {
        self.accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(chain: &mut Chain, lines: &[u8]) -> Vec<u8> {
        let mut buf = lines.to_vec();
        chain.close_batch(&mut buf);
        buf
    }

    #[test]
    fn valid_end_keeps_whole_checked_batches_only() {
        let base = b"{\"key\":1,\"value\":1}\n".to_vec();
        let mut chain = Chain::new(7);
        let mut data = base.clone();
        let b1 = batch(
            &mut chain,
            b"{\"key\":2,\"value\":2}\n{\"key\":3,\"value\":3}\n",
        );
        data.extend_from_slice(&b1);
        let after_b1 = data.len();
        let b2 = batch(&mut chain, b"{\"key\":4,\"value\":4}\n");
        data.extend_from_slice(&b2);
        let full = Chain::new(7).valid_end(&data, base.len());
        assert_eq!(full.0, data.len());
        assert_eq!(
            full.1 .0.digest(),
            chain.0.digest(),
            "the chain goes on from there"
        );
        for cut in base.len()..data.len() {
            let want = if cut >= after_b1 {
                after_b1
            } else {
                base.len()
            };
            assert_eq!(
                Chain::new(7).valid_end(&data[..cut], base.len()).0,
                want,
                "cut at {cut}"
            );
        }
        // A batch whose bytes were garbled is not accepted, nor anything after it.
        let mut bad = data.clone();
        bad[base.len() + 3] ^= 1;
        assert_eq!(Chain::new(7).valid_end(&bad, base.len()).0, base.len());
    }

    #[test]
    fn the_line_by_line_validator_agrees_with_valid_end() {
        let mut chain = Chain::new(9);
        let mut data = b"{\"key\":0,\"value\":0}\n".to_vec();
        let from = data.len();
        for i in 1..6 {
            let lines = format!("{{\"key\":{i},\"value\":{i}}}\n{{\"key\":{i}}}\n");
            data.extend(batch(&mut chain, lines.as_bytes()));
        }
        data.extend_from_slice(b"{\"key\":9,\"value\":9,\"ck\":\"0000000000000000\"}\n");
        for cut in from..=data.len() {
            let part = &data[..cut];
            let whole = Chain::new(9).valid_end(part, from);
            let mut v = Validator::new(Chain::new(9), from);
            for l in codec::lines(part, from).filter(|l| l.complete) {
                v.line(l.offset, l.bytes);
            }
            let lined = v.finish();
            assert_eq!(whole.0, lined.0, "cut at {cut}");
            assert_eq!(whole.1 .0.digest(), lined.1 .0.digest(), "cut at {cut}");
        }
    }

    #[test]
    fn another_salt_never_validates_the_same_bytes() {
        // The same bytes after the same prefix: a rebuilt `P` equal to a prefix of the
        // old one, whose old batches are stale blocks now.
        let mut old = Chain::new(1);
        let data = batch(&mut old, b"{\"key\":2,\"value\":2}\n");
        assert_eq!(Chain::new(1).valid_end(&data, 0).0, data.len());
        assert_eq!(Chain::new(2).valid_end(&data, 0).0, 0);
    }

    #[test]
    fn a_legacy_chain_covers_the_bytes_before_the_count() {
        let prefix = b"{\"key\":1,\"value\":1}\n".to_vec();
        let mut chain = Chain::new(0);
        chain.extend(&prefix);
        let mut data = prefix.clone();
        data.extend(batch(&mut chain, b"{\"key\":2,\"value\":2}\n"));
        let from = prefix.len();
        let mut chain = Chain::new(0);
        chain.extend(&data[..from]);
        assert_eq!(chain.valid_end(&data, from).0, data.len());
    }
}
