//! The last so many of something the mock remembers (requests, leads, sales), with a count of
//! all of them: a server that runs for days stays bounded, and its counters stay exact.

use std::collections::VecDeque;

/// The default bound of [`super::MockDubBuilder::history`].
pub(crate) const DEFAULT_LIMIT: usize = 100_000;

#[derive(Debug)]
pub(crate) struct History<T> {
    kept: VecDeque<T>,
    limit: usize,
    /// How many were ever pushed; the oldest kept one is number `pushed - kept.len()`.
    /// Numbers are never reused, so that one taken before a `clear` names nothing after it.
    pushed: u64,
    /// `pushed` at the last `clear`.
    counted_from: u64,
}

impl<T> Default for History<T> {
    fn default() -> Self {
        History::new(DEFAULT_LIMIT)
    }
}

impl<T> History<T> {
    pub(crate) fn new(limit: usize) -> History<T> {
        History {
            kept: VecDeque::new(),
            limit,
            pushed: 0,
            counted_from: 0,
        }
    }

    /// Keeps `item`, forgetting the oldest beyond the limit; returns its number (from 0).
    pub(crate) fn push(&mut self, item: T) -> u64 {
        if self.limit > 0 {
            if self.kept.len() == self.limit {
                self.kept.pop_front();
            }
            self.kept.push_back(item);
        }
        self.pushed += 1;
        self.pushed - 1
    }

    /// Item number `n`, if it is still kept.
    pub(crate) fn get_mut(&mut self, n: u64) -> Option<&mut T> {
        let first = self.pushed - self.kept.len() as u64;
        let at = usize::try_from(n.checked_sub(first)?).ok()?;
        self.kept.get_mut(at)
    }

    /// The kept items with their numbers, oldest first.
    pub(crate) fn numbered(&self) -> impl Iterator<Item = (u64, &T)> {
        (self.pushed - self.kept.len() as u64..).zip(self.kept.iter())
    }

    /// How many were pushed since the last `clear`, kept or not.
    pub(crate) fn total(&self) -> u64 {
        self.pushed - self.counted_from
    }

    pub(crate) fn kept(&self) -> usize {
        self.kept.len()
    }

    /// Forgets the kept items and restarts the count.
    pub(crate) fn clear(&mut self) {
        self.kept.clear();
        self.counted_from = self.pushed;
    }
}

impl<T: Clone> History<T> {
    /// The kept items, oldest first.
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.kept.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::History;

    #[test]
    fn keeps_the_last_items_and_counts_them_all() {
        let mut h = History::new(3);
        for i in 0..5u32 {
            assert_eq!(h.push(i), u64::from(i));
        }
        assert_eq!(h.to_vec(), [2, 3, 4]);
        assert_eq!((h.total(), h.kept()), (5, 3));
        assert!(h.get_mut(1).is_none(), "forgotten");
        *h.get_mut(3).unwrap() = 30;
        assert_eq!(h.to_vec(), [2, 30, 4]);
        assert!(h.get_mut(5).is_none(), "not yet pushed");

        let mut none = History::new(0);
        assert_eq!((none.push(1), none.push(2)), (0, 1));
        assert_eq!((none.total(), none.kept()), (2, 0));
        h.clear();
        assert_eq!((h.total(), h.kept()), (0, 0));
        assert_eq!(h.push(9), 5, "numbers go on after a clear");
        assert!(
            h.get_mut(4).is_none(),
            "a number from before the clear names nothing"
        );
        assert_eq!(h.total(), 1);
    }
}
