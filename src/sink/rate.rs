//! Living at the stream's quota: a send rate learned from throttling.
//!
//! A Direct PUT stream takes a fixed number of bytes, records and calls per second (1 MiB/s,
//! 1,000 records... in ap-northeast-2 by default) and answers the excess with
//! `ServiceUnavailableException` entries. Sending as fast as possible and backing off after each
//! refusal wastes most of the quota on refused records and retries (Fluent Bit used under a third
//! of it here). The [`RateGovernor`] instead paces calls:
//!
//! - **Learn from throttling (multiplicative decrease).** When the destination throttles while it
//!   is accepting records, what it accepted over the last second is, by definition, about its
//!   quota: the rates become 95 % of that (bytes, records and calls per second). Several calls
//!   are in flight and their answers need not come in the order they left: calls sent before
//!   the refused one but answered after it belong to that second too, and complete the
//!   measurement when their answers come within a second of the refusal (one answered later
//!   may have been accepted in a later second: it is not counted, so a link whose round trips
//!   vary by seconds cannot inflate the measurement).
//! - **Probe for more (additive increase).** Every second without throttling, each rate grows by
//!   1 % of the rate learned at the last throttle, so a quota raised by AWS is found again.
//! - **Pace, do not burst.** Calls are spaced so that no 100 ms holds more than its share: a
//!   quota counted per second is never exceeded by a burst at a window's edge. Nor does one
//!   call carry more than 100 ms of the pace ([`RateGovernor::call_allowance`]): batches are
//!   filled to it and larger ones split, or packed records' 2 MiB calls would be refused in
//!   part at every call by a stream taking 1 MiB a second.
//! - **Ceilings.** `max_bytes_per_sec` and `max_records_per_sec` are never passed.
//!
//! A call throttled as a whole, with nothing accepted over the last second (an outage, or a
//! quota shared with another writer at its limit), teaches nothing about the rate: the flusher's
//! exponential back-off handles it, and the learned rate stays.
//!
//! Time is passed in (`Instant`), so the arithmetic is tested without clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSize {
    pub bytes: u64,
    pub records: u64,
}

/// Rates per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub bytes: Option<f64>,
    pub records: Option<f64>,
    pub calls: Option<f64>,
}

/// Rates are never lowered below these (bytes, records, calls per second): a signal that is not
/// about the rate (random refusals) must not starve delivery. Below them, the flusher's back-off
/// still slows a destination that refuses everything.
const FLOOR: Rates = Rates { bytes: Some(256.0 * 1024.0), records: Some(256.0), calls: Some(10.0) };

/// Fraction of the accepted rate taken after a throttle.
const DECREASE_TO: f64 = 0.95;
/// Growth per second without throttling, as a fraction of the rate learned at the last throttle.
const INCREASE_PER_SECOND: f64 = 0.01;
/// How far ahead of the pace calls may be sent (a burst allowance).
const BURST: Duration = Duration::from_millis(100);
/// The window over which accepted traffic is measured: quotas are per second.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RateGovernor {
    ceiling: Rates,
    current: Rates,
    /// The rates set at the last throttle: the step of additive increase.
    learned: Rates,
    last_throttle: Option<Instant>,
    last_increase: Option<Instant>,
    /// When the next call may go (virtual scheduling).
    next_send: Option<Instant>,
    /// Accepted calls answered during the last [`WINDOW`], by when they were answered.
    accepted: VecDeque<(Instant, CallSize)>,
    /// The last throttle's measurement, still open to answers of calls sent before it.
    last_learning: Option<Learning>,
}

/// What a throttle measured: the accepted traffic answered in the second before it.
#[derive(Debug, Clone, Copy)]
struct Learning {
    /// When the refused call was sent: answers that come later for calls sent earlier were
    /// overtaken by the refusal, and belong to the measurement.
    refused_call_sent_at: Instant,
    /// When the refusal came: overtaken answers count only within [`WINDOW`] of it.
    refused_at: Instant,
    /// The rates in force before the throttle lowered them.
    before: Rates,
    measured: CallSize,
    calls: u64,
}

impl RateGovernor {
    pub fn new(ceiling: Rates) -> RateGovernor {
        RateGovernor {
            ceiling,
            current: ceiling,
            learned: Rates::default(),
            last_throttle: None,
            last_increase: None,
            next_send: None,
            accepted: VecDeque::new(),
            last_learning: None,
        }
    }

    /// The rates in force.
    pub fn rates(&self) -> Rates {
        self.current
    }

    /// How long to wait before sending a call of `size` at `now`; the call is booked.
    pub fn reserve(&mut self, size: CallSize, now: Instant) -> Duration {
        self.increase(now);
        let cost = [
            self.current.bytes.map(|rate| size.bytes as f64 / rate),
            self.current.records.map(|rate| size.records as f64 / rate),
            self.current.calls.map(|rate| 1.0 / rate),
        ]
        .into_iter()
        .flatten()
        .fold(0.0, f64::max);
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let start = self.next_send.map_or(now, |next| next.max(earliest));
        self.next_send = Some(start + Duration::from_secs_f64(cost.min(3600.0)));
        start.saturating_duration_since(now)
    }

    /// The most one call should carry at the pace in force: [`BURST`]'s share of the byte and
    /// record rates, so that no call is a burst by itself (a stream taking 1 MiB a second can
    /// never take a 2 MiB call whole). Unlimited before any throttle or ceiling.
    pub fn call_allowance(&self) -> CallSize {
        let share = |rate: Option<f64>| rate.map_or(u64::MAX, |rate| (rate * BURST.as_secs_f64()) as u64);
        CallSize { bytes: share(self.current.bytes), records: share(self.current.records) }
    }

    /// The destination accepted `size` of a call sent at `sent_at`.
    pub fn accepted(&mut self, size: CallSize, sent_at: Instant, now: Instant) {
        self.forget_before(now);
        if size.records == 0 {
            return;
        }
        self.accepted.push_back((now, size));
        // A call that left before the refused one and was answered after the refusal belongs
        // to what the throttle measured: without it the rate is learned short by the calls
        // that were overtaken (one in five of a second's calls, measured with four in flight).
        let Some(learning) = self.last_learning.as_mut() else { return };
        if now.saturating_duration_since(learning.refused_at) >= WINDOW {
            self.last_learning = None;
            return;
        }
        if sent_at >= learning.refused_call_sent_at {
            return;
        }
        learning.measured = learning.measured.plus(size);
        learning.calls += 1;
        let corrected = lowered_rates(learning.before, learning.measured, learning.calls, self.ceiling);
        self.current = Rates {
            bytes: larger(self.current.bytes, corrected.bytes),
            records: larger(self.current.records, corrected.records),
            calls: larger(self.current.calls, corrected.calls),
        };
        self.learned = corrected;
    }

    /// The destination throttled (a whole call sent at `sent_at`, or entries of one). Returns
    /// the new rates when they were lowered.
    pub fn throttled(&mut self, sent_at: Instant, now: Instant) -> Option<Rates> {
        self.forget_before(now);
        // One overload shows as several refusals in a row: lower once per window.
        if self.last_throttle.is_some_and(|last| now.saturating_duration_since(last) < WINDOW) {
            return None;
        }
        let total = self.accepted.iter().fold(CallSize { bytes: 0, records: 0 }, |sum, (_, size)| sum.plus(*size));
        if total.records == 0 {
            return None;
        }
        let calls = self.accepted.len() as u64;
        let before = self.current;
        self.current = lowered_rates(before, total, calls, self.ceiling);
        self.last_learning = Some(Learning { refused_call_sent_at: sent_at, refused_at: now, before, measured: total, calls });
        // What the last second carried already spent the budget from its first call on: the
        // next call waits until that traffic is paid for at the new rate.
        let spent = [
            self.current.bytes.map(|rate| total.bytes as f64 / rate),
            self.current.records.map(|rate| total.records as f64 / rate),
            self.current.calls.map(|rate| calls as f64 / rate),
        ]
        .into_iter()
        .flatten()
        .fold(0.0, f64::max);
        if let Some(&(oldest, _)) = self.accepted.front() {
            let paid_until = oldest + Duration::from_secs_f64(spent.min(3600.0));
            self.next_send = Some(self.next_send.map_or(paid_until, |next| next.max(paid_until)));
        }
        self.learned = self.current;
        self.last_throttle = Some(now);
        self.last_increase = Some(now);
        Some(self.current)
    }

    /// Additive increase: every whole second since the last throttle or increase.
    fn increase(&mut self, now: Instant) {
        let Some(since) = self.last_increase else { return };
        let seconds = now.saturating_duration_since(since).as_secs();
        if seconds == 0 {
            return;
        }
        let grow = |current: Option<f64>, learned: Option<f64>, ceiling: Option<f64>| match (current, learned) {
            (Some(current), Some(step)) => {
                let grown = current + step * INCREASE_PER_SECOND * seconds as f64;
                Some(ceiling.map_or(grown, |ceiling| grown.min(ceiling)))
            }
            (current, _) => current,
        };
        self.current = Rates {
            bytes: grow(self.current.bytes, self.learned.bytes, self.ceiling.bytes),
            records: grow(self.current.records, self.learned.records, self.ceiling.records),
            calls: grow(self.current.calls, self.learned.calls, self.ceiling.calls),
        };
        self.last_increase = Some(since + Duration::from_secs(seconds));
    }

    fn forget_before(&mut self, now: Instant) {
        while self.accepted.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= WINDOW) {
            self.accepted.pop_front();
        }
    }
}

impl CallSize {
    fn plus(self, other: CallSize) -> CallSize {
        CallSize { bytes: self.bytes + other.bytes, records: self.records + other.records }
    }
}

/// The rates after a throttle: 95 % of what was `measured` over a second (never above what was
/// in force `before` nor the ceiling, never below the floor).
fn lowered_rates(before: Rates, measured: CallSize, calls: u64, ceiling: Rates) -> Rates {
    let lowered = |current: Option<f64>, measured: f64, ceiling: Option<f64>, floor: Option<f64>| {
        let target = (measured * DECREASE_TO).max(floor.unwrap_or(1.0));
        Some(current.map_or(target, |current| current.min(target)).min(ceiling.unwrap_or(f64::MAX)))
    };
    Rates {
        bytes: lowered(before.bytes, measured.bytes as f64, ceiling.bytes, FLOOR.bytes),
        records: lowered(before.records, measured.records as f64, ceiling.records, FLOOR.records),
        calls: lowered(before.calls, calls as f64, ceiling.calls, FLOOR.calls),
    }
}

/// The larger of two rates; `None` is unlimited, so the larger.
fn larger(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a?.max(b?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALL: CallSize = CallSize { bytes: 73_000, records: 500 };

    /// Runs a governor against a destination that takes `quota_bytes` per fixed one-second
    /// window, for `seconds`; returns (bytes accepted, calls, throttled calls).
    fn simulate(quota_bytes: u64, seconds: u64, ceiling: Rates) -> (u64, u64, u64) {
        let start = Instant::now();
        let mut governor = RateGovernor::new(ceiling);
        let mut now = start;
        let (mut accepted, mut calls, mut throttled) = (0, 0, 0);
        let mut window = 0;
        let mut used = 0;
        while now < start + Duration::from_secs(seconds) {
            now += governor.reserve(CALL, now) + Duration::from_millis(2);
            let this_window = now.duration_since(start).as_secs();
            if this_window != window {
                (window, used) = (this_window, 0);
            }
            calls += 1;
            let taken = CALL.bytes.min(quota_bytes.saturating_sub(used));
            used += taken;
            accepted += taken;
            governor.accepted(CallSize { bytes: taken, records: taken * CALL.records / CALL.bytes }, now, now);
            if taken < CALL.bytes {
                throttled += 1;
                governor.throttled(now, now);
            }
        }
        (accepted, calls, throttled)
    }

    #[test]
    fn at_a_per_second_quota_the_learned_rate_uses_most_of_it_with_few_throttled_calls() {
        let quota = 1 << 20;
        let (accepted, calls, throttled) = simulate(quota, 60, Rates::default());
        let used = accepted as f64 / (60.0 * quota as f64);
        assert!(used >= 0.9, "used {:.1} % of the quota", used * 100.0);
        assert!(throttled * 20 <= calls, "{throttled} of {calls} calls throttled");
    }

    #[test]
    fn a_ceiling_is_never_passed() {
        let ceiling = Rates { bytes: Some(200_000.0), ..Rates::default() };
        let (accepted, _, throttled) = simulate(u64::MAX, 10, ceiling);
        assert_eq!(throttled, 0);
        assert!(accepted as f64 <= 200_000.0 * 10.0 + CALL.bytes as f64 * 2.0, "{accepted}");
    }

    #[test]
    fn refusals_that_are_not_about_the_rate_never_push_it_below_the_floor() {
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let mut now = start;
        // One record in ten refused whatever the rate: each second looks like a throttle.
        for _ in 0..600 {
            now += governor.reserve(CALL, now) + Duration::from_millis(1);
            governor.accepted(CallSize { bytes: CALL.bytes * 9 / 10, records: CALL.records * 9 / 10 }, now, now);
            governor.throttled(now, now);
        }
        let rates = governor.rates();
        assert!(rates.bytes.is_some_and(|rate| rate >= 256.0 * 1024.0), "{rates:?}");
        assert!(rates.calls.is_some_and(|rate| rate >= 10.0), "{rates:?}");
    }

    #[test]
    fn a_throttle_with_nothing_accepted_lately_teaches_nothing() {
        let now = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        assert_eq!(governor.throttled(now, now), None);
        assert_eq!(governor.rates(), Rates::default());
        assert_eq!(governor.reserve(CALL, now), Duration::ZERO, "unlimited until something is learned");
    }

    #[test]
    fn one_call_carries_at_most_a_tenth_of_a_second_of_the_learned_rate() {
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        assert_eq!(governor.call_allowance(), CallSize { bytes: u64::MAX, records: u64::MAX }, "unlimited until something is learned");
        for call in 0..10 {
            let at = start + Duration::from_millis(50 * call);
            governor.accepted(CALL, at, at);
        }
        governor.throttled(start + Duration::from_millis(500), start + Duration::from_millis(500)).expect("lowered");
        let allowance = governor.call_allowance();
        assert_eq!(allowance.bytes, (CALL.bytes as f64 * 10.0 * 0.95 * 0.1) as u64);
        assert_eq!(allowance.records, (CALL.records as f64 * 10.0 * 0.95 * 0.1) as u64);
        let ceiling = RateGovernor::new(Rates { bytes: Some(1_000_000.0), records: None, calls: None });
        assert_eq!(ceiling.call_allowance(), CallSize { bytes: 100_000, records: u64::MAX }, "a configured ceiling paces from the start");
    }

    /// When call `call` of a run sent 10 ms apart from `start` left.
    fn sent(start: Instant, call: u64) -> Instant {
        start + Duration::from_millis(10 * call)
    }

    /// Calls 0 to 9 answered, then call 13 refused while calls 10 to 12 are still in flight:
    /// the governor, when the refusal came, and the rates it set.
    fn refused_while_three_calls_travel(start: Instant) -> (RateGovernor, Instant, Rates) {
        let mut governor = RateGovernor::new(Rates::default());
        for call in 0..10 {
            governor.accepted(CALL, sent(start, call), sent(start, call) + Duration::from_millis(5));
        }
        let refused_at = sent(start, 13) + Duration::from_millis(1);
        let lowered = governor.throttled(sent(start, 13), refused_at).expect("lowered");
        (governor, refused_at, lowered)
    }

    #[test]
    fn calls_sent_before_the_refused_one_and_answered_after_it_still_count_in_what_it_learns() {
        let start = Instant::now();
        let (mut governor, refused_at, lowered) = refused_while_three_calls_travel(start);
        assert_eq!(lowered.bytes, Some(CALL.bytes as f64 * 10.0 * 0.95));
        for call in 10..13 {
            governor.accepted(CALL, sent(start, call), refused_at + Duration::from_millis(call));
        }
        let learned = governor.rates();
        assert_eq!(learned.bytes, Some(CALL.bytes as f64 * 13.0 * 0.95), "{learned:?}");
        assert_eq!(learned.calls, Some(13.0 * 0.95), "{learned:?}");
        // Calls sent after the refused one are the next second's traffic.
        governor.accepted(CALL, refused_at + Duration::from_millis(20), refused_at + Duration::from_millis(25));
        assert_eq!(governor.rates(), learned);
    }

    #[test]
    fn an_overtaken_answer_more_than_a_second_after_the_refusal_does_not_count() {
        let start = Instant::now();
        let (mut governor, refused_at, lowered) = refused_while_three_calls_travel(start);
        // Call 10 was held up on a slow path for seconds: it may have been accepted in any
        // later second, so it says nothing about the second the refusal measured.
        governor.accepted(CALL, sent(start, 10), refused_at + Duration::from_millis(2_500));
        assert_eq!(governor.rates(), lowered);
        // Nor does any overtaken answer after it.
        governor.accepted(CALL, sent(start, 11), refused_at + Duration::from_millis(2_600));
        assert_eq!(governor.rates(), lowered);
    }

    #[test]
    fn far_away_the_rate_is_what_was_answered_over_the_last_second() {
        // Two-second round trips, a call every 100 ms, answers in the order the calls left.
        let start = Instant::now();
        let call = CallSize { bytes: 100_000, records: 1_000 };
        let round_trip = Duration::from_secs(2);
        let sent = |index: u32| start + Duration::from_millis(100) * index;
        let mut governor = RateGovernor::new(Rates::default());
        for index in 0..30 {
            governor.accepted(call, sent(index), sent(index) + round_trip);
        }
        // Call 30 is refused; calls 21 to 29 were answered in the second before.
        let lowered = governor.throttled(sent(30), sent(30) + round_trip).expect("lowered");
        assert_eq!(lowered.bytes, Some(9.0 * 100_000.0 * 0.95));
        // The calls that left while call 30 travelled are answered after it, and are not part
        // of what it measured.
        for index in 31..50 {
            governor.accepted(call, sent(index), sent(index) + round_trip);
        }
        assert_eq!(governor.rates().bytes, lowered.bytes);
    }

    #[test]
    fn after_a_throttle_the_rate_grows_back_by_one_percent_of_it_per_second() {
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        governor.accepted(CallSize { bytes: 1_000_000, records: 1_000 }, start, start);
        let lowered = governor.throttled(start, start).expect("lowered");
        assert_eq!((lowered.bytes, lowered.records), (Some(950_000.0), Some(950.0)));
        governor.reserve(CallSize { bytes: 0, records: 0 }, start + Duration::from_secs(10));
        let grown = governor.rates().bytes.expect("a rate");
        assert!((grown - 950_000.0 * 1.1).abs() < 1.0, "{grown}");
    }
}
