//! Seeded samples for the long test matrices (kill points, Kerrighed's
//! test programs): a run picks from a seed it prints, and the same seed
//! picks the same again, so a failure can be replayed.

use anyhow::{Context, Result};

/// SplitMix64: a small generator that a seed reproduces.
pub(crate) struct Seeded(pub(crate) u64);

impl Seeded {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `k` of the indices `0..n`, different, in increasing order.
    pub(crate) fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        // The first k places of a Fisher-Yates shuffle.
        for i in 0..k.min(n) {
            let j = i + (self.next() % (n - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut picked = all[..k.min(n)].to_vec();
        picked.sort_unstable();
        picked
    }
}

/// The seed in environment variable `var`, or a new one from the clock.
pub(crate) fn seed_from_env(var: &str) -> Result<u64> {
    match std::env::var(var) {
        Ok(text) => text
            .parse::<u64>()
            .with_context(|| format!("{var}={text} is not a number")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_picks_the_same_and_every_index_is_picked_by_some_seed() {
        assert_eq!(Seeded(7).pick(12, 6), Seeded(7).pick(12, 6));
        let mut seen = [0usize; 12];
        for seed in 0..200 {
            let picked = Seeded(seed).pick(12, 6);
            assert_eq!(picked.len(), 6);
            assert!(picked.windows(2).all(|w| w[0] < w[1]), "{picked:?}");
            for i in picked {
                seen[i] += 1;
            }
        }
        // 200 samples of 6 in 12: each index about 100 times.
        assert!(seen.iter().all(|&n| (60..140).contains(&n)), "{seen:?}");
        // Asking for more than there is gives all of it.
        assert_eq!(Seeded(1).pick(3, 5), vec![0, 1, 2]);
    }
}
