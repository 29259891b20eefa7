//! The targets' numbers (`tracer_common::config::TARGET_NUMBERS`): given out in turn, so that a
//! number comes back only after every other has been given, and never two with the same index
//! in the per-target arrays at once.

use std::collections::HashMap;

use tracer_common::config::{MAX_TARGETS, TARGET_NUMBERS, target_index};

/// The numbers given out, and which to give next.
#[derive(Debug, Default)]
pub struct Numbers {
    /// The next number to try.
    next: u32,
    /// By index ([`target_index`]): the number given and its target's thread-group id.
    given: HashMap<u32, (u32, u32)>,
}

impl Numbers {
    /// A number for the target `tgid`; `None` when [`MAX_TARGETS`] are given out.
    pub fn give(&mut self, tgid: u32) -> Option<u32> {
        if self.given.len() >= MAX_TARGETS as usize {
            return None;
        }
        // The indices of successive numbers go round all of them: a free one comes within
        // MAX_TARGETS tries.
        loop {
            let number = self.next;
            self.next = (self.next + 1) % TARGET_NUMBERS;
            if let std::collections::hash_map::Entry::Vacant(entry) =
                self.given.entry(target_index(number))
            {
                entry.insert((number, tgid));
                return Some(number);
            }
        }
    }

    /// Takes `number` back; returns its target's thread-group id, if it was given out.
    pub fn take_back(&mut self, number: u32) -> Option<u32> {
        let index = target_index(number);
        match self.given.get(&index) {
            Some(&(given, tgid)) if given == number => {
                self.given.remove(&index);
                Some(tgid)
            }
            _ => None,
        }
    }

    /// The numbers given out.
    pub fn given(&self) -> impl Iterator<Item = u32> + '_ {
        self.given.values().map(|&(number, _)| number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_comes_back_only_after_every_other() {
        let mut numbers = Numbers::default();
        let first = numbers.give(100).unwrap();
        assert_eq!(numbers.take_back(first), Some(100));
        // Given and taken back at once, over and over: never the same number again until
        // every other has been given.
        let mut seen = std::collections::HashSet::from([first]);
        for _ in 1..TARGET_NUMBERS {
            let number = numbers.give(100).unwrap();
            assert!(seen.insert(number), "{number} given twice");
            numbers.take_back(number);
        }
        assert_eq!(numbers.give(100), Some(first));
    }

    #[test]
    fn no_two_targets_share_an_index_and_a_full_table_refuses() {
        let mut numbers = Numbers::default();
        let long_lived = numbers.give(1).unwrap();
        // Others come and go while the first stays: none takes its index.
        for tgid in 2..2000 {
            let number = numbers.give(tgid).unwrap();
            assert_ne!(target_index(number), target_index(long_lived));
            assert_eq!(numbers.take_back(number), Some(tgid));
        }
        for tgid in 2..=MAX_TARGETS {
            numbers.give(tgid).unwrap();
        }
        let indices: std::collections::HashSet<u32> = numbers.given().map(target_index).collect();
        assert_eq!(indices.len(), MAX_TARGETS as usize);
        assert_eq!(numbers.give(9999), None);
        // A number not given (or given before, to another) is not taken back.
        assert_eq!(numbers.take_back(long_lived + MAX_TARGETS), None);
        assert_eq!(numbers.take_back(long_lived), Some(1));
        assert!(numbers.give(9999).is_some());
    }
}
