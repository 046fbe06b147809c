//! A ring of samples with a fixed capacity: all of its memory is taken when it is made,
//! and once full each new sample overwrites the oldest. Knows nothing of what a sample
//! means.

/// At most `capacity` samples, oldest first.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    buf: Box<[T]>,
    /// Where the oldest sample is.
    head: usize,
    len: usize,
}

impl<T: Copy> Ring<T> {
    /// An empty ring of `capacity` samples (at least 1), `fill` in the unused places.
    pub fn new(capacity: usize, fill: T) -> Self {
        Ring::filled(capacity, 0, fill)
    }

    /// A ring already holding `len` copies of `fill` (at most `capacity`): a series
    /// that starts after others, kept aligned with them.
    pub fn filled(capacity: usize, len: usize, fill: T) -> Self {
        let capacity = capacity.max(1);
        Ring {
            buf: vec![fill; capacity].into_boxed_slice(),
            head: 0,
            len: len.min(capacity),
        }
    }

    /// How many samples it can hold.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// How many samples it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the newest sample; when full, the oldest goes.
    pub fn push(&mut self, value: T) {
        let capacity = self.buf.len();
        if self.len < capacity {
            self.buf[(self.head + self.len) % capacity] = value;
            self.len += 1;
        } else {
            self.buf[self.head] = value;
            self.head = (self.head + 1) % capacity;
        }
    }

    /// The newest sample.
    pub fn last(&self) -> Option<T> {
        (self.len > 0).then(|| self.buf[(self.head + self.len - 1) % self.buf.len()])
    }

    /// Replaces the newest sample (none: nothing happens).
    pub fn set_last(&mut self, value: T) {
        if self.len > 0 {
            let at = (self.head + self.len - 1) % self.buf.len();
            self.buf[at] = value;
        }
    }

    /// Every sample, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        let capacity = self.buf.len();
        (0..self.len).map(move |k| self.buf[(self.head + k) % capacity])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keeps_the_newest_samples_oldest_first() {
        let mut ring = Ring::new(3, 0u32);
        assert!(ring.is_empty());
        assert_eq!(ring.last(), None);
        for v in 1..=5 {
            ring.push(v);
        }
        assert_eq!(ring.iter().collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(ring.last(), Some(5));
        ring.set_last(9);
        assert_eq!(ring.iter().collect::<Vec<_>>(), vec![3, 4, 9]);
        assert_eq!((ring.len(), ring.capacity()), (3, 3));
    }

    #[test]
    fn a_late_series_starts_filled_and_a_zero_capacity_is_one() {
        let mut ring = Ring::filled(4, 2, u8::MAX);
        ring.push(1);
        assert_eq!(ring.iter().collect::<Vec<_>>(), vec![u8::MAX, u8::MAX, 1]);
        assert_eq!(Ring::filled(2, 9, 0u8).len(), 2);
        let mut one = Ring::new(0, 0u8);
        one.push(7);
        one.push(8);
        assert_eq!(one.iter().collect::<Vec<_>>(), vec![8]);
    }

    proptest! {
        /// Against a model: a deque that drops its front beyond the capacity.
        #[test]
        fn behaves_as_a_bounded_deque(
            capacity in 1usize..20,
            prefill in 0usize..25,
            ops in proptest::collection::vec(proptest::option::of(any::<u16>()), 0..100),
        ) {
            let mut ring = Ring::filled(capacity, prefill, 0u16);
            let mut model: VecDeque<u16> = std::iter::repeat_n(0, prefill.min(capacity)).collect();
            for op in ops {
                match op {
                    Some(v) => {
                        ring.push(v);
                        model.push_back(v);
                        if model.len() > capacity {
                            model.pop_front();
                        }
                    }
                    None => {
                        ring.set_last(u16::MAX);
                        if let Some(last) = model.back_mut() {
                            *last = u16::MAX;
                        }
                    }
                }
                prop_assert!(ring.len() <= capacity);
                prop_assert_eq!(ring.capacity(), capacity);
                prop_assert_eq!(ring.last(), model.back().copied());
            }
            prop_assert_eq!(ring.iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }
    }
}
