//! A small seeded generator (xorshift64*) for the soak's fault schedule and the bad-input
//! cases: a run is repeated from its seed, and nothing here needs more than that.

/// xorshift64*, seeded; a zero seed is taken as 1 (xorshift never leaves zero).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index into something of length `len` (0 when it is empty).
    pub(crate) fn index(&mut self, len: usize) -> usize {
        (self.next() % len.max(1) as u64) as usize
    }
}
