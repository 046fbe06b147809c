//! The bounded session table of a UDP listener: one session per client address, at
//! most `cap` of them; when full, the oldest idle session makes room (a second-chance
//! clock over insertion order, O(1) amortized), so a flood of source addresses costs
//! a fixed amount of memory. The same eviction frees a place on demand when the
//! forwarder's fd budget, not the table, is full ([`SessionTable::free_one`]).
//!
//! Pure: the listener passes what it knows of each session through [`SessionLike`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

/// What the table needs to know of a session.
pub trait SessionLike {
    /// When traffic last went either way (any monotonic unit).
    fn last_activity(&self) -> u64;
    /// Whether the session already ended by itself (idle, response limit, error).
    fn is_ended(&self) -> bool;
}

/// Sessions by client address.
#[derive(Debug)]
pub struct SessionTable<S> {
    map: HashMap<SocketAddr, S>,
    /// Client addresses in the order they were (re)queued, with the activity seen
    /// then: a session active since gets a second chance at the back.
    order: VecDeque<(SocketAddr, u64)>,
    cap: usize,
}

impl<S: SessionLike> SessionTable<S> {
    /// An empty table for at most `cap` sessions (at least 1).
    pub fn new(cap: usize) -> Self {
        SessionTable {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The session of `client`, unless it ended.
    pub fn live(&self, client: &SocketAddr) -> Option<&S> {
        self.map.get(client).filter(|s| !s.is_ended())
    }

    /// Sessions held (ended ones until the next [`SessionTable::remove_ended`]).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts `client`'s new session, first making room: returns the live session
    /// evicted for it, if one had to go (the caller ends it and counts it).
    pub fn insert(&mut self, client: SocketAddr, session: S) -> Option<S> {
        let evicted = if self.map.contains_key(&client) {
            None
        } else {
            self.make_room()
        };
        self.order.push_back((client, session.last_activity()));
        self.map.insert(client, session);
        // A client whose sessions end and start again (one per datagram with
        // `udp_responses = 1`) queues its address each time: keep the queue bounded.
        if self.order.len() > self.cap * 4 + 16 {
            self.compact();
        }
        evicted
    }

    /// Frees one place whatever the cap (the fd budget is full): drops an ended
    /// session (answering `None`: nothing left to end), or evicts the oldest idle
    /// live one and answers it for the caller to end and count. `None` when empty.
    pub fn free_one(&mut self) -> Option<S> {
        let held = self.map.len();
        if held == 0 {
            return None;
        }
        self.make_room_below(held)
    }

    /// Drops the sessions that ended, and the order entries nothing refers to.
    pub fn remove_ended(&mut self) {
        self.map.retain(|_, s| !s.is_ended());
        if self.order.len() > self.map.len() * 2 + 16 {
            self.compact();
        }
    }

    /// Keeps one order entry per held session: its newest.
    fn compact(&mut self) {
        let mut seen = HashSet::with_capacity(self.map.len());
        let map = &self.map;
        let mut kept: Vec<(SocketAddr, u64)> = self
            .order
            .iter()
            .rev()
            .filter(|(client, _)| map.contains_key(client) && seen.insert(*client))
            .copied()
            .collect();
        kept.reverse();
        self.order = kept.into();
    }

    /// Frees one place when the table is full: ended sessions go first; a session
    /// active since it was queued is queued again; the first one that was not is the
    /// oldest idle, and is evicted. After two passes without one, the front goes
    /// anyway (every session busy: the cap still holds).
    fn make_room(&mut self) -> Option<S> {
        self.make_room_below(self.cap)
    }

    /// [`SessionTable::make_room`] until fewer than `cap` sessions are held.
    fn make_room_below(&mut self, cap: usize) -> Option<S> {
        let mut budget = self.order.len() * 2;
        while self.map.len() >= cap {
            let (client, seen) = self.order.pop_front()?;
            let Some(session) = self.map.get(&client) else {
                continue;
            };
            if session.is_ended() {
                self.map.remove(&client);
                continue;
            }
            let now = session.last_activity();
            if now > seen && budget > 0 {
                budget -= 1;
                self.order.push_back((client, now));
                continue;
            }
            return self.map.remove(&client);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Debug, Clone)]
    struct Fake {
        activity: Rc<Cell<u64>>,
        ended: Rc<Cell<bool>>,
    }

    impl Fake {
        fn at(t: u64) -> Fake {
            Fake {
                activity: Rc::new(Cell::new(t)),
                ended: Rc::new(Cell::new(false)),
            }
        }
    }

    impl SessionLike for Fake {
        fn last_activity(&self) -> u64 {
            self.activity.get()
        }
        fn is_ended(&self) -> bool {
            self.ended.get()
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_oldest_idle_session_makes_room() {
        let mut t = SessionTable::new(3);
        let (a, b, c) = (Fake::at(1), Fake::at(2), Fake::at(3));
        assert!(t.insert(addr(1), a.clone()).is_none());
        assert!(t.insert(addr(2), b.clone()).is_none());
        assert!(t.insert(addr(3), c).is_none());
        // `a` is busy again; `b` has been idle the longest.
        a.activity.set(10);
        let evicted = t.insert(addr(4), Fake::at(11)).expect("full");
        assert_eq!(evicted.last_activity(), 2);
        assert_eq!(t.len(), 3);
        assert!(t.live(&addr(1)).is_some());
        assert!(t.live(&addr(2)).is_none());
    }

    #[test]
    fn ended_sessions_go_before_any_live_one_is_evicted() {
        let mut t = SessionTable::new(2);
        let a = Fake::at(1);
        t.insert(addr(1), a.clone());
        t.insert(addr(2), Fake::at(2));
        a.ended.set(true);
        assert!(t.live(&addr(1)).is_none());
        assert!(
            t.insert(addr(3), Fake::at(3)).is_none(),
            "room made by the ended one"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_flood_of_sources_never_exceeds_the_cap_and_order_stays_bounded() {
        let mut t = SessionTable::new(100);
        let mut evicted = 0;
        for port in 1..=10_000u16 {
            if t.insert(addr(port), Fake::at(u64::from(port))).is_some() {
                evicted += 1;
            }
            assert!(t.len() <= 100);
        }
        assert_eq!(evicted, 10_000 - 100);
        t.remove_ended();
        assert!(t.order.len() <= 2 * 100 + 16, "{}", t.order.len());
    }

    #[test]
    fn one_client_starting_sessions_again_and_again_keeps_the_queue_bounded() {
        let mut t = SessionTable::new(10);
        for i in 0..10_000u64 {
            let s = Fake::at(i);
            t.insert(addr(1), s.clone());
            s.ended.set(true);
        }
        assert!(t.order.len() <= 4 * 10 + 16 + 1, "{}", t.order.len());
    }

    #[test]
    fn freeing_one_place_drops_an_ended_session_or_evicts_the_oldest_idle() {
        let mut t = SessionTable::new(10);
        let (a, b, c) = (Fake::at(1), Fake::at(2), Fake::at(3));
        t.insert(addr(1), a.clone());
        t.insert(addr(2), b.clone());
        t.insert(addr(3), c.clone());
        a.ended.set(true);
        assert!(t.free_one().is_none(), "the ended one goes, nothing to end");
        assert_eq!(t.len(), 2);
        // Below its cap, yet a place is freed: `b` is busy again, `c` the oldest idle.
        b.activity.set(10);
        let evicted = t.free_one().expect("the oldest idle");
        assert_eq!(evicted.last_activity(), 3);
        assert_eq!(t.len(), 1);
        assert!(t.free_one().is_some());
        assert!(t.free_one().is_none(), "empty");
    }

    #[test]
    fn every_session_busy_still_keeps_the_cap() {
        let mut t = SessionTable::new(2);
        let (a, b) = (Fake::at(1), Fake::at(1));
        t.insert(addr(1), a.clone());
        t.insert(addr(2), b.clone());
        a.activity.set(5);
        b.activity.set(5);
        assert!(t.insert(addr(3), Fake::at(6)).is_some());
        assert_eq!(t.len(), 2);
    }
}
