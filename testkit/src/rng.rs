//! A small xorshift generator for load and soak drivers: their random choices (which user, which
//! pod, which request) need spread, not quality, and the same seed gives the same sequence.

/// Xorshift64: never zero, so it never gets stuck.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed`; different seeds start far apart.
    pub fn seeded(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % (n.max(1) as u64)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;

    #[test]
    fn same_seed_same_sequence_and_values_stay_below_the_bound() {
        let mut a = XorShift::seeded(7);
        let mut b = XorShift::seeded(7);
        let mut c = XorShift::seeded(8);
        let from_a: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let from_b: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        let from_c: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
        assert_eq!(from_a, from_b);
        assert_ne!(from_a, from_c);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[a.below(10)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700), "spread over 0..10: {seen:?}");
        assert_eq!(a.below(0), 0);
    }
}
