//! A per-source limit on UDP queries, in the spirit of BIND's and Knot's response
//! rate limiting: beyond `[dns] queries_per_sec` a source gets a header-only answer
//! with TC set instead of its records. That answer is no bigger than the query (no
//! amplification for a spoofed source), and a real client asks again over TCP,
//! which a spoofed source cannot.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hickory_proto::op::{Message, MessageType};

/// Sources tracked at most: past it, those idle long enough are forgotten, and if
/// that is not enough (a flood of spoofed sources), all are.
const MAX_TRACKED: usize = 100_000;

/// How often idle sources are forgotten.
const TIDY_EVERY: Duration = Duration::from_secs(10);

/// The limit of one UDP receive loop (it alone uses it: no lock).
#[derive(Debug)]
pub struct SourceLimit {
    per_sec: NonZeroU32,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    next_tidy: Instant,
}

impl SourceLimit {
    /// `per_sec` queries per second per source address, bursts of as many.
    pub fn new(per_sec: NonZeroU32) -> SourceLimit {
        SourceLimit {
            per_sec,
            limiter: RateLimiter::keyed(Quota::per_second(per_sec)),
            next_tidy: Instant::now() + TIDY_EVERY,
        }
    }

    /// Whether `source` may have a full answer now (the query is counted).
    pub fn allows(&mut self, source: IpAddr) -> bool {
        self.tidy();
        self.limiter.check_key(&source).is_ok()
    }

    fn tidy(&mut self) {
        let now = Instant::now();
        if now < self.next_tidy && self.limiter.len() < MAX_TRACKED {
            return;
        }
        self.next_tidy = now + TIDY_EVERY;
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        if self.limiter.len() >= MAX_TRACKED {
            tracing::warn!(
                tracked = self.limiter.len(),
                "dns: too many query sources to track; their rate limits start over"
            );
            self.limiter = RateLimiter::keyed(Quota::per_second(self.per_sec));
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
        let mut limit = SourceLimit::new(NonZeroU32::new(5).unwrap());
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
