//! Event ids on ClickHouse. Several aggregators write to one ClickHouse and
//! none of them talks to the others, so there is no single counter: each
//! aggregator takes ids from its own clock, as
//! `(milliseconds since the epoch << 13 | a count within the millisecond)
//! << 8 | tag`, where `tag` (0..=255) is the aggregator's own, registered
//! in the `aggregators` table when it starts (a free one is picked). Ids
//! are unique across aggregators, increase within one aggregator, and
//! across aggregators follow commit time to the extent their clocks agree:
//! a live tail on one aggregator therefore re-reads a short window before
//! its cursor (see `super::tail_lag`). More than 8192 events in a
//! millisecond borrow from the next one (ids stay unique and increasing).
//! The largest id (year 2109) is below 2^63.

use std::sync::Mutex;

/// Bits of the per-millisecond count.
const COUNT_BITS: u32 = 13;
/// Bits of the aggregator's tag.
pub const TAG_BITS: u32 = 8;

pub struct IdSource {
    tag: i64,
    /// The next counter value (ms << COUNT_BITS | count) not yet handed out.
    next: Mutex<i64>,
}

impl IdSource {
    pub fn new(tag: u8) -> Self {
        Self {
            tag: i64::from(tag),
            next: Mutex::new(0),
        }
    }

    /// `n` consecutive ids (at least one is reserved, so that an empty
    /// batch still has a commit id of its own): the first, and the step
    /// between two.
    pub fn reserve(&self, n: usize, now_ms: i64) -> (i64, i64) {
        let n = i64::try_from(n.max(1)).unwrap_or(i64::MAX);
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = (*next).max(now_ms << COUNT_BITS);
        *next = start + n;
        ((start << TAG_BITS) | self.tag, 1 << TAG_BITS)
    }

    /// The id of the `i`th event of a reservation starting at `first`.
    pub fn nth(first: i64, i: usize) -> i64 {
        first + (i64::try_from(i).unwrap_or(0) << TAG_BITS)
    }

    /// The milliseconds since the epoch an id was handed out at (or
    /// slightly before: a count past 8192 borrows from the next ms).
    pub fn millis(id: i64) -> i64 {
        id >> (TAG_BITS + COUNT_BITS)
    }

    /// An id below every id handed out at `ms` or later.
    pub fn floor_at(ms: i64) -> i64 {
        (ms.max(0) << COUNT_BITS) << TAG_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_increasing_and_carry_the_tag() {
        let a = IdSource::new(3);
        let b = IdSource::new(4);
        let (a1, step) = a.reserve(10_000, 1_700_000_000_000);
        let (a2, _) = a.reserve(1, 1_700_000_000_000);
        let (b1, _) = b.reserve(5, 1_700_000_000_000);
        assert_eq!(step, 256);
        assert_eq!(a1 & 0xff, 3);
        assert_eq!(b1 & 0xff, 4);
        // The second reservation starts after the 10000 ids of the first,
        // borrowing from the next milliseconds.
        assert_eq!(a2, IdSource::nth(a1, 10_000));
        assert!(a2 > IdSource::nth(a1, 9_999));
        assert_ne!(a1, b1);
        assert_eq!(IdSource::millis(a1), 1_700_000_000_000);
        assert!(IdSource::floor_at(1_700_000_000_000) <= a1.min(b1));
        // The clock going back does not make ids go back.
        let (a3, _) = a.reserve(1, 1_600_000_000_000);
        assert!(a3 > a2);
        // Year 2109 still fits.
        let far = IdSource::new(255).reserve(1, (1i64 << 42) - 1).0;
        assert!(far > 0);
    }
}
