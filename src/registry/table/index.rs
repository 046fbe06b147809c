//! The ranking index of one service: the [`RankKey`]s of the instances that can be
//! handed out, in rank order, with per-subtree sums of what the rebalancing rule's
//! hole search needs. Owns only keys and their sums; what an instance is, and which
//! instances count, is the table's business.
//!
//! A heartbeat asks the rebalancing rule how deep the holes are: the connections it
//! would take to lift every instance under a floor to that floor. Walking the keys
//! under the floor costs as many steps as there are such instances, which in a fleet
//! with uneven loads is a large share of it (issue 11: 2.2 ms per heartbeat at 100k
//! instances). Here each key carries a weight and its assumed connections, and each
//! node the sums of its subtree, so the deficit under any floor,
//! `floor × Σweight − Σassumed`, and the lowest counted key are one descent: O(log N)
//! whatever the loads.
//!
//! The tree is a treap (a binary search tree whose nodes also form a heap on random
//! priorities, so its expected depth is O(log N) for any order of keys) in an arena of
//! nodes addressed by `u32`, freed nodes reused. Every node visited counts one step,
//! so tests can tell a cost that grows with the fleet without timing it.

use std::cell::Cell;

use crate::registry::rank::RankKey;

/// No node.
const NIL: u32 = u32::MAX;

/// What a key adds to the hole search: its weight and its assumed connections, or
/// zeros for a key that cannot take a device (over its cap, or reachable only
/// through the forwarder).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoleSums {
    /// Sum of weights.
    pub weight: u64,
    /// Sum of `connections + pending`.
    pub assumed: u64,
}

impl HoleSums {
    fn add(self, other: HoleSums) -> HoleSums {
        HoleSums {
            weight: self.weight + other.weight,
            assumed: self.assumed + other.assumed,
        }
    }
}

/// One key. Laid out in one cache line (64 bytes, aligned), since a descent at 100k
/// keys misses the cache at nearly every node: its own weight is at most 1,000, and
/// 32 random bits are priority enough.
#[derive(Debug, Clone)]
#[repr(align(64))]
struct Node {
    key: RankKey,
    left: u32,
    right: u32,
    priority: u32,
    own_weight: u32,
    own_assumed: u64,
    /// Its own sums plus both subtrees'.
    sum: HoleSums,
}

const _: () = assert!(std::mem::size_of::<Node>() == 64);

impl Node {
    fn own(&self) -> HoleSums {
        HoleSums {
            weight: u64::from(self.own_weight),
            assumed: self.own_assumed,
        }
    }
}

/// The ordered keys of one service, with subtree sums.
#[derive(Debug, Clone)]
pub struct RankIndex {
    nodes: Vec<Node>,
    free: Vec<u32>,
    root: u32,
    /// State of the priority generator (splitmix64): deterministic for a given
    /// sequence of operations, so tests replay.
    rng: u64,
    /// Nodes visited so far.
    steps: Cell<u64>,
}

impl Default for RankIndex {
    fn default() -> Self {
        RankIndex {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            rng: 0x005E_ED0F_1DE7,
            steps: Cell::new(0),
        }
    }
}

impl RankIndex {
    /// Nodes visited since the index was made: the cost measure of its operations.
    pub fn steps(&self) -> u64 {
        self.steps.get()
    }

    /// Inserts `key` with what it adds to the hole search (a weight of at most
    /// `u32::MAX`). A key already present is a caller's bug (keys carry the unique
    /// slot); it would be kept twice.
    pub fn insert(&mut self, key: RankKey, own: HoleSums) {
        let priority = self.next_priority();
        let own_weight = u32::try_from(own.weight).expect("weights are at most 1,000");
        let node = Node {
            key,
            left: NIL,
            right: NIL,
            priority,
            own_weight,
            own_assumed: own.assumed,
            sum: HoleSums {
                weight: u64::from(own_weight),
                assumed: own.assumed,
            },
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                u32::try_from(self.nodes.len() - 1).expect("fewer than 2^32 keys")
            }
        };
        self.root = self.insert_at(self.root, id);
    }

    /// Number of keys in the index.
    pub fn len(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Whether no key is in the index.
    pub fn is_empty(&self) -> bool {
        self.root == NIL
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &RankKey) -> bool {
        let (root, removed) = self.remove_at(self.root, key);
        self.root = root;
        removed
    }

    /// The smallest key whose hole sums are not zero: the best instance that can take
    /// a device through `/servers`.
    pub fn first_counted(&self) -> Option<RankKey> {
        let mut at = self.root;
        if self.sum(at).weight == 0 {
            return None;
        }
        loop {
            self.step();
            let node = &self.nodes[at as usize];
            if self.sum(node.left).weight > 0 {
                at = node.left;
            } else if node.own_weight > 0 {
                return Some(node.key);
            } else {
                // The subtree's sum is not zero and neither the left nor this node's
                // is: the right one's is.
                at = node.right;
            }
        }
    }

    /// The hole sums of every key smaller than `bound`.
    pub fn sums_below(&self, bound: &RankKey) -> HoleSums {
        let mut total = HoleSums::default();
        let mut at = self.root;
        while at != NIL {
            self.step();
            let node = &self.nodes[at as usize];
            if node.key < *bound {
                total = total.add(self.sum(node.left)).add(node.own());
                at = node.right;
            } else {
                at = node.left;
            }
        }
        total
    }

    /// The keys in rank order, best first.
    pub fn iter(&self) -> Iter<'_> {
        let mut iter = Iter {
            index: self,
            stack: Vec::with_capacity(48),
        };
        iter.push_left_spine(self.root);
        iter
    }

    fn step(&self) {
        self.steps.set(self.steps.get() + 1);
    }

    fn sum(&self, at: u32) -> HoleSums {
        if at == NIL {
            HoleSums::default()
        } else {
            self.nodes[at as usize].sum
        }
    }

    /// Recomputes a node's subtree sum from its children's.
    fn pull(&mut self, at: u32) {
        let node = &self.nodes[at as usize];
        let sum = node
            .own()
            .add(self.sum(node.left))
            .add(self.sum(node.right));
        self.nodes[at as usize].sum = sum;
    }

    fn next_priority(&mut self) -> u32 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 32) as u32
    }

    /// Inserts node `id` into the subtree at `at`; returns the subtree's new root.
    fn insert_at(&mut self, at: u32, id: u32) -> u32 {
        if at == NIL {
            return id;
        }
        self.step();
        if self.nodes[id as usize].priority > self.nodes[at as usize].priority {
            let key = self.nodes[id as usize].key;
            let (left, right) = self.split(at, &key);
            let node = &mut self.nodes[id as usize];
            node.left = left;
            node.right = right;
            self.pull(id);
            return id;
        }
        if self.nodes[id as usize].key < self.nodes[at as usize].key {
            let left = self.insert_at(self.nodes[at as usize].left, id);
            self.nodes[at as usize].left = left;
        } else {
            let right = self.insert_at(self.nodes[at as usize].right, id);
            self.nodes[at as usize].right = right;
        }
        self.pull(at);
        at
    }

    /// Splits the subtree at `at` into the keys smaller than `key` and the others.
    fn split(&mut self, at: u32, key: &RankKey) -> (u32, u32) {
        if at == NIL {
            return (NIL, NIL);
        }
        self.step();
        if self.nodes[at as usize].key < *key {
            let (left, right) = self.split(self.nodes[at as usize].right, key);
            self.nodes[at as usize].right = left;
            self.pull(at);
            (at, right)
        } else {
            let (left, right) = self.split(self.nodes[at as usize].left, key);
            self.nodes[at as usize].left = right;
            self.pull(at);
            (left, at)
        }
    }

    /// Joins two subtrees, every key of `low` smaller than every key of `high`.
    fn merge(&mut self, low: u32, high: u32) -> u32 {
        if low == NIL {
            return high;
        }
        if high == NIL {
            return low;
        }
        self.step();
        if self.nodes[low as usize].priority > self.nodes[high as usize].priority {
            let right = self.merge(self.nodes[low as usize].right, high);
            self.nodes[low as usize].right = right;
            self.pull(low);
            low
        } else {
            let left = self.merge(low, self.nodes[high as usize].left);
            self.nodes[high as usize].left = left;
            self.pull(high);
            high
        }
    }

    /// Removes `key` from the subtree at `at`; returns the new root and whether it
    /// was found.
    fn remove_at(&mut self, at: u32, key: &RankKey) -> (u32, bool) {
        if at == NIL {
            return (NIL, false);
        }
        self.step();
        let node = &self.nodes[at as usize];
        match key.cmp(&node.key) {
            std::cmp::Ordering::Equal => {
                let (left, right) = (node.left, node.right);
                self.free.push(at);
                (self.merge(left, right), true)
            }
            std::cmp::Ordering::Less => {
                let (left, found) = self.remove_at(node.left, key);
                self.nodes[at as usize].left = left;
                if found {
                    self.pull(at);
                }
                (at, found)
            }
            std::cmp::Ordering::Greater => {
                let (right, found) = self.remove_at(node.right, key);
                self.nodes[at as usize].right = right;
                if found {
                    self.pull(at);
                }
                (at, found)
            }
        }
    }
}

/// In-order walk of a [`RankIndex`]; each node visited counts one step.
#[derive(Debug)]
pub struct Iter<'a> {
    index: &'a RankIndex,
    stack: Vec<u32>,
}

impl Iter<'_> {
    fn push_left_spine(&mut self, mut at: u32) {
        while at != NIL {
            self.index.step();
            self.stack.push(at);
            at = self.index.nodes[at as usize].left;
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = RankKey;

    fn next(&mut self) -> Option<RankKey> {
        let at = self.stack.pop()?;
        let node = &self.index.nodes[at as usize];
        self.push_left_spine(node.right);
        Some(node.key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn key(load: u16, slot: u32) -> RankKey {
        RankKey::new(load >= 900, f64::from(load), u64::from(slot) * 7919, slot)
    }

    fn own(load: u16, slot: u32) -> HoleSums {
        if load >= 900 || slot.is_multiple_of(5) {
            HoleSums::default()
        } else {
            HoleSums {
                weight: u64::from(slot % 3 + 1),
                assumed: u64::from(load) * u64::from(slot % 3 + 1),
            }
        }
    }

    fn depth(index: &RankIndex, at: u32) -> usize {
        if at == NIL {
            0
        } else {
            let node = &index.nodes[at as usize];
            1 + depth(index, node.left).max(depth(index, node.right))
        }
    }

    proptest! {
        /// Against a `BTreeMap`: order, sums below any bound and the first counted
        /// key stay right through inserts and removes.
        #[test]
        fn matches_a_sorted_map(ops in prop::collection::vec((any::<bool>(), 0u16..1000, 0u32..64), 1..300),
                                bound in 0u16..1000) {
            let mut index = RankIndex::default();
            let mut model: BTreeMap<RankKey, HoleSums> = BTreeMap::new();
            let mut loads: BTreeMap<u32, u16> = BTreeMap::new();
            for (insert, load, slot) in ops {
                if let Some(old) = loads.remove(&slot) {
                    prop_assert!(index.remove(&key(old, slot)));
                    model.remove(&key(old, slot));
                }
                if insert {
                    index.insert(key(load, slot), own(load, slot));
                    model.insert(key(load, slot), own(load, slot));
                    loads.insert(slot, load);
                }
                prop_assert_eq!(index.iter().count(), model.len());
            }
            let keys: Vec<RankKey> = index.iter().collect();
            prop_assert_eq!(&keys, &model.keys().copied().collect::<Vec<_>>());
            let bound = RankKey::new(false, f64::from(bound), 0, 0);
            let want = model
                .range(..bound)
                .fold(HoleSums::default(), |acc, (_, s)| acc.add(*s));
            prop_assert_eq!(index.sums_below(&bound), want);
            let first = model.iter().find(|(_, s)| s.weight > 0).map(|(k, _)| *k);
            prop_assert_eq!(index.first_counted(), first);
            prop_assert!(!index.remove(&RankKey::new(false, 0.5, 1, 1_000)));
        }
    }

    #[test]
    fn stays_shallow_on_keys_inserted_in_order_and_reuses_nodes() {
        let mut index = RankIndex::default();
        for slot in 0..100_000 {
            index.insert(key(0, slot), HoleSums::default());
        }
        // Expected depth of a treap is about 3 × log2 N (50 here); 2× that is far
        // from the 100,000 of a tree that kept the insertion order.
        assert!(
            depth(&index, index.root) < 100,
            "{}",
            depth(&index, index.root)
        );
        for slot in 0..100_000 {
            assert!(index.remove(&key(0, slot)));
        }
        assert_eq!(index.iter().count(), 0);
        index.insert(key(1, 1), HoleSums::default());
        assert_eq!(index.nodes.len(), 100_000, "freed nodes are reused");
    }
}
