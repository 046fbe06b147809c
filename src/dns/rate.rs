//! A per-source limit on UDP queries, in the spirit of BIND's and Knot's response
//! rate limiting: beyond `[dns] queries_per_sec` a source gets a header-only answer
//! with TC set instead of its records. That answer is no bigger than the query (no
//! amplification for a spoofed source), and a real client asks again over TCP,
//! which a spoofed source cannot.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hickory_proto::op::{Message, MessageType};

/// Sources tracked at most: past it, those idle long enough are forgotten, and if
/// that is not enough (a flood of spoofed sources), all are.
const MAX_TRACKED: usize = 100_000;

/// How often idle sources are forgotten.
const TIDY_EVERY: Duration = Duration::from_secs(10);

/// How often the number of sources tracked is looked at (counting them walks every
/// shard of the map: not per query).
const COUNT_EVERY: Duration = Duration::from_millis(100);

/// The limit all UDP receive loops share, so that a source is limited the same
/// whichever socket the kernel hands its datagrams to (`SO_REUSEPORT` spreads one
/// address's ports over them). The keyed limiter is itself concurrent; tidying is
/// done by one loop at a time.
#[derive(Debug)]
pub struct SourceLimit {
    per_sec: NonZeroU32,
    limiter: ArcSwap<DefaultKeyedRateLimiter<IpAddr>>,
    started: Instant,
    /// Milliseconds after `started` when the count is next looked at.
    next_count_ms: AtomicU64,
    /// When idle sources are next forgotten; held by the loop tidying.
    next_tidy: Mutex<Instant>,
}

impl SourceLimit {
    /// `per_sec` queries per second per source address, bursts of as many.
    pub fn new(per_sec: NonZeroU32) -> SourceLimit {
        let started = Instant::now();
        SourceLimit {
            per_sec,
            limiter: ArcSwap::from_pointee(RateLimiter::keyed(Quota::per_second(per_sec))),
            started,
            next_count_ms: AtomicU64::new(0),
            next_tidy: Mutex::new(started + TIDY_EVERY),
        }
    }

    /// Whether `source` may have a full answer now (the query is counted).
    pub fn allows(&self, source: IpAddr) -> bool {
        self.tidy();
        self.limiter.load().check_key(&source).is_ok()
    }

    fn tidy(&self) {
        let now = Instant::now();
        let ms = u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        if ms < self.next_count_ms.load(Ordering::Relaxed) {
            return;
        }
        // Another loop is at it.
        let Ok(mut next_tidy) = self.next_tidy.try_lock() else {
            return;
        };
        let step = u64::try_from(COUNT_EVERY.as_millis()).unwrap_or(100);
        self.next_count_ms.store(ms + step, Ordering::Relaxed);
        let limiter = self.limiter.load();
        if now < *next_tidy && limiter.len() < MAX_TRACKED {
            return;
        }
        *next_tidy = now + TIDY_EVERY;
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() >= MAX_TRACKED {
            tracing::warn!(
                tracked = limiter.len(),
                "dns: too many query sources to track; their rate limits start over"
            );
            self.limiter
                .store(Arc::new(RateLimiter::keyed(Quota::per_second(
                    self.per_sec,
                ))));
        }
    }
}

/// The header-only, truncated answer to `query`; `None` for a response or bytes
/// that do not decode (not answered at all past the limit).
pub fn slip(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type == MessageType::Response {
        return None;
    }
    let mut answer = Message::response(request.metadata.id, request.metadata.op_code);
    answer.metadata.recursion_desired = request.metadata.recursion_desired;
    answer.metadata.truncation = true;
    if request.queries.len() == 1 {
        answer.queries = request.queries;
    }
    answer.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn a_source_over_its_rate_is_refused_and_others_are_not() {
        let limit = SourceLimit::new(NonZeroU32::new(5).unwrap());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let allowed = (0..20).filter(|_| limit.allows(a)).count();
        assert_eq!(
            allowed, 5,
            "a burst of the rate, then nothing within the second"
        );
        assert!(limit.allows(b));
    }

    #[test]
    fn the_slip_is_truncated_keeps_the_id_and_the_question_and_is_no_bigger() {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("mqtt.sb.example.com.").unwrap(),
            RecordType::A,
        ));
        let wire = q.to_vec().unwrap();
        let slip = slip(&wire).unwrap();
        assert!(slip.len() <= wire.len());
        let m = Message::from_vec(&slip).unwrap();
        assert!(m.metadata.truncation);
        assert_eq!(m.metadata.id, q.metadata.id);
        assert_eq!(m.queries, q.queries);
        assert!(m.answers.is_empty());
        assert_eq!(super::slip(&[0u8; 5]), None);
    }
}
