//! Living at the stream's quota without mistaking noise for it: a send rate learned from the
//! refusals that follow the rate, and only from those.
//!
//! A Direct PUT stream takes a fixed number of bytes, records and calls per second (1 MiB/s,
//! 1,000 calls/s in ap-northeast-2 by default) and answers the excess with
//! `ServiceUnavailableException` entries. Sending as fast as possible and backing off after each
//! refusal wastes most of the quota (Fluent Bit used under a third of it). But a stream also
//! refuses records for reasons that have nothing to do with the rate: a busy partition now and
//! then, `InternalFailure` entries, a throttled call while another writer bursts. Slowing down
//! for those costs everything and buys nothing: with 1 % of records refused at random, a
//! governor that lowers the rate at every refusal ratchets down to its floor (issue 17 measured
//! a 1,000-fold fall). The [`RateGovernor`] tells the two apart by what the refusals do when the
//! rate changes (docs/rate-control.md has the reasoning and the measurements):
//!
//! - **The refused share, not the refusal.** Over the last second, the share of records sent
//!   that were refused for throughput (entries with a throttling code, or every record of a call
//!   throttled whole; `InternalFailure` is a fault, never a rate) is compared with the *noise
//!   floor*: the share that was seen to persist whatever the rate. Within the floor's tolerance
//!   nothing changes; the refused records are simply sent again.
//! - **Lower, then look (a test, undone when wrong).** Above it, the rates are lowered to 95 % of
//!   what the destination accepted over that second (a quota's measure). Then the calls sent at
//!   the lower rate decide: if the refused share fell with the rate, it was a quota, the lower
//!   rate stays and what is still refused is the noise floor. If it did not fall, the refusals
//!   are noise: the rates before the test come back (as TCP undoes a spurious congestion
//!   response, RFC 3522) and the share becomes the floor. A floor is trusted for
//!   [`NOISE_MEMORY`], then tested again, so a wrong verdict costs at most that long.
//! - **A share no noise has is a quota at once.** When a quarter or more of what was sent is
//!   refused (an unpaced start against a quota, a quota halved by another writer) the rates are
//!   lowered without a test, once per second while it lasts. So is, before any rate is
//!   learned, a call refused entry by entry in full while others are accepted: random refusals
//!   never refuse dozens of entries in a row, a spent quota second refuses all that come.
//! - **Scout past the default.** Most streams run at their region's default quota (the
//!   destination says which, [`RateGovernor::expecting`]). Before any rate is learned, the call
//!   that would take the last second's sending past it goes alone, and the others wait for its
//!   answer: refused at its end, about as far as it went past the default, it met the quota and
//!   the rates are lowered at once; answered otherwise, the quota is larger (raised, or never
//!   there) and sending goes on unpaced. One round trip once per start, instead of the calls in
//!   flight all going into a spent second (8 of a start's 9 throttled calls at 1 MiB/s).
//! - **Probe for more, faster the longer it holds.** At a learned rate, after [`HOLD`] without a
//!   quota decision, each second the pace limits the calls, the rates grow by 1 %, 2 %, 4 % ...
//!   of the learned rate (at most 25 % a second), so a quota raised by AWS is found within
//!   seconds, and the first step over the quota is small.
//! - **Pace, do not burst.** Calls are spaced so that no 100 ms holds more than its share: a
//!   quota counted per second is never exceeded by a burst at a window's edge. Nor does one
//!   call carry more than 100 ms of the pace ([`RateGovernor::call_allowance`]): batches are
//!   filled to it and larger ones split, or packed records' 2 MiB calls would be refused in
//!   part at every call by a stream taking 1 MiB a second.
//! - **Overtaken answers.** Several calls are in flight and their answers need not come in the
//!   order they left: calls sent before the refused one but answered after it, within a second
//!   of the refusal, belong to the measurement and complete it.
//! - **Ceilings.** `max_bytes_per_sec` and `max_records_per_sec` are never passed.
//!
//! A call throttled as a whole with nothing accepted over the last second (an outage, or a
//! quota shared with another writer at its limit) teaches nothing about the rate: the courier's
//! exponential back-off handles it, and the learned rate stays.
//!
//! Time is passed in (`Instant`), so the arithmetic is tested without clocks, over simulated
//! seconds of every situation (noise, a quota, both, a quota that changes).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one call carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// What the destination answered to one call, as the governor reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallAnswer {
    pub sent_at: Instant,
    pub sent: CallSize,
    pub accepted: CallSize,
    /// Records refused for throughput: entries with a throttling code, or every record of a
    /// call throttled whole. Records refused for any other reason are in neither count.
    pub refused_for_throughput: u64,
    /// The call was throttled whole (not answered entry by entry).
    pub throttled_whole: bool,
    /// The longest run of entries at the call's end that begins with one refused for
    /// throughput and of which nine in ten or more were: a byte quota running out within a call
    /// refuses every entry after the one that met it but a smaller one that still fits, where
    /// records refused at random are scattered.
    pub refused_at_the_end: u64,
}

/// A change of pace, with what it was decided from (for the log and the metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceChange {
    pub decision: PaceDecision,
    /// The rates now in force.
    pub rates: Rates,
    /// Share of the records sent over the second decided on that was refused for throughput.
    pub refused_share: f64,
    /// The share taken for noise from now on.
    pub noise_floor: f64,
}

/// Why the pace changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceDecision {
    /// A quarter or more of what was sent was refused, or, before any rate was learned, every
    /// entry of a call or, while scouting past the default quota, the end of one: a quota,
    /// lowered to what it took.
    Lowered,
    /// More was refused than the noise floor explains: lowered to what was taken, to see
    /// whether the refusals fall with the rate.
    Testing,
    /// They fell with the rate: a quota; the lower rate stays.
    QuotaConfirmed,
    /// They did not: noise; the rates before the test are back.
    NoiseRestored,
    /// Before any floor was measured, the refusals were spread over the calls as records
    /// refused one by one at random are, not lumped as a quota's: noise, without a test.
    NoiseRecognized,
}

impl PaceDecision {
    /// The label of the decision in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            PaceDecision::Lowered => "lowered",
            PaceDecision::Testing => "testing",
            PaceDecision::QuotaConfirmed => "quota_confirmed",
            PaceDecision::NoiseRestored => "noise_restored",
            PaceDecision::NoiseRecognized => "noise_recognized",
        }
    }
}

/// Rates are never lowered below these (bytes, records, calls per second): should refusals
/// that are not about the rate ever be taken for a quota, delivery still goes on. Below them,
/// the courier's back-off still slows a destination that refuses everything.
const FLOOR: Rates = Rates { bytes: Some(256.0 * 1024.0), records: Some(256.0), calls: Some(10.0) };

/// Fraction of the accepted rate taken when a quota is found...
const DECREASE_TO: f64 = 0.95;
/// ...and the most of the pace in force a decrease leaves.
const AT_MOST_OF_BEFORE: f64 = 0.9;
/// The first probing step, as a fraction of the learned rate; each step doubles the last.
const FIRST_STEP: f64 = 0.01;
/// The largest probing step a second, as a fraction of the rate in force.
const LARGEST_STEP: f64 = 0.25;
/// How long a learned rate is kept before probing above it.
pub const HOLD: Duration = Duration::from_secs(2);
/// How far ahead of the pace calls may be sent (a burst allowance).
const BURST: Duration = Duration::from_millis(100);
/// The window over which answers are measured: quotas are per second.
const WINDOW: Duration = Duration::from_secs(1);
/// The span over which the rate a test starts from is measured (see `consider_refusals`).
const MEASURED_OVER: Duration = Duration::from_secs(2);
/// A refused share at or above this, over this many calls or by more than its spread, is a
/// quota without a test: no stream's noise is that loud.
const QUOTA_AT_ONCE: f64 = 0.25;
const QUOTA_AT_ONCE_CALLS: usize = 8;
/// A call of at least this many records refused entry by entry in full, while others were
/// accepted and no rate is learned yet, is a quota at once: records refused at random, even one
/// in ten, never refuse 32 in a row (10⁻³²), but a quota's second that has run out refuses
/// every entry of the calls that come after. Deciding on the first such answer, not on the
/// quarter of a second's records, spares the calls an unpaced start would send into the spent
/// second meanwhile.
const REFUSED_IN_FULL_AT_LEAST: u64 = 32;
/// A scout's refused end says "the default quota" when it is at least this long: records
/// refused at random, one in ten, end a call with four in a row once in 10⁴ calls.
const SCOUT_TAIL_AT_LEAST: u64 = 4;
/// Another call's refused end says "a quota" while scouting when it is at least this long
/// (once in 10⁸ calls at random): its answer may overtake the scout's, or a quota below the
/// default runs out before the scout.
const TAIL_AT_LEAST: u64 = 8;
/// A scout's answer is waited for at most this long: a call lost to a timeout must not hold the
/// others back for longer than a quota's second.
const SCOUT_WAITED_FOR_AT_MOST: Duration = Duration::from_secs(1);
/// Below this share, refusals are never a signal (a record or two at a window's edge).
const SMALLEST_SIGNAL: f64 = 0.005;
/// The least records a call has for a quarter of them refused entry by entry to be a quota's
/// shape (see [`CallAnswer::refused_by_entry_in_bulk`]).
const BULK_CALL_AT_LEAST: u64 = 128;
/// A test lasts at least this long, and until this many calls sent at the lower rate are
/// answered; then until the shares differ by more than their spread, or it has lasted
/// [`TEST_LONGEST`], when their point estimates decide.
const TEST_SPAN: Duration = Duration::from_secs(1);
const TEST_CALLS: usize = 4;
const TEST_LONGEST: Duration = Duration::from_secs(5);
/// The refused share "fell with the rate" when it fell below this fraction of what it was, and
/// "rose" (the quota fell meanwhile) above this multiple.
const FELL_TO: f64 = 0.7;
const ROSE_TO: f64 = 1.5;
/// Refusals spread as single records' are (see [`Tally::refused_as_single_records`]): over at
/// least this many refused records, the calls' refused counts scatter at most this many times
/// as much as a binomial's of the same share. Records refused one by one at random scatter as
/// a binomial does (the ratio is 1, within √(2 / calls)); a quota refuses what comes after its
/// second ran out, so its refusals sit in the few calls at a second's end (a ratio of tens).
const SINGLE_REFUSALS_AT_LEAST: u64 = 20;
const SCATTER_AT_MOST: f64 = 2.0;
/// The shape says something only of calls this large on average: a call of r records refused
/// in a lump scatters about r times as much as chance would, so lumps of calls of one or two
/// records (50 KiB lines at 1 MiB/s, a stream of its own per record) look like chance.
const SHAPE_RECORDS_PER_CALL_AT_LEAST: u64 = 16;
/// How long a measured noise floor is trusted before the next refusals above the smallest
/// signal are tested again: what a wrong verdict can cost at most.
pub const NOISE_MEMORY: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct RateGovernor {
    ceiling: Rates,
    current: Rates,
    /// The rates set at the last quota decision: the unit of probing steps.
    learned: Rates,
    phase: Phase,
    /// When the last decision lowered the rates (at most one a [`WINDOW`]).
    last_lowered: Option<Instant>,
    /// The share of records refused whatever the rate, and when it was measured.
    noise: Option<NoiseFloor>,
    /// When the next call may go, by each rate (virtual scheduling, one schedule per rate:
    /// charging each call the largest of its costs would bill a mix of large calls and small
    /// resends twice, bytes for the one and calls for the other).
    next_send: Schedules,
    /// When the pace last held a call back: probing only counts seconds the pace limits.
    last_held_back: Option<Instant>,
    /// Calls answered during the last [`WINDOW`].
    answers: VecDeque<Answered>,
    /// The last decrease's measurement, still open to answers of calls sent before it.
    last_learning: Option<Learning>,
    /// While the stream's default quota is yet to be met or passed (see
    /// [`RateGovernor::expecting`]).
    scouting: Option<Scouting>,
}

/// Sending up to a stream's default quota, and past it one call at a time.
#[derive(Debug)]
struct Scouting {
    /// The quota most streams of the destination have (a region's Direct PUT default).
    default: Rates,
    /// The calls booked over the last [`WINDOW`].
    booked: VecDeque<Booking>,
    /// The call that went past the default, until it and the calls booked before it are
    /// answered: answers overtake each other, and a call sent before the scout but taken after
    /// it can be the one the quota runs out in.
    scout: Option<Scout>,
}

#[derive(Debug, Clone, Copy)]
struct Booking {
    /// When it was booked: its answer's `sent_at`.
    sent_at: Instant,
    size: CallSize,
    answered: bool,
}

#[derive(Debug, Clone, Copy)]
struct Scout {
    sent_at: Instant,
    /// About how many of its records lay past the default: what a quota at the default refuses.
    past_the_default: u64,
    answered: bool,
}

/// What one answer says of a quota by itself, before any rate is learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuotaSign {
    /// Nothing by itself: the share refused over the last second decides.
    None,
    /// Every entry of a call refused one by one (see [`CallAnswer::refused_in_full`]).
    RefusedInFull,
    /// While scouting, the scout refused at its end about as far as it went past the default
    /// quota, or another call refused at its end (see [`RateGovernor::refused_at_its_end`]).
    RefusedAtItsEnd,
}

/// When the next call may go by the bytes, records and calls rates (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Schedules([Option<Instant>; 3]);

#[derive(Debug, Clone, Copy, PartialEq)]
#[expect(clippy::large_enum_variant, reason = "one per route, and Copy: boxing would buy nothing")]
enum Phase {
    /// No quota known: the rates are the ceilings.
    Free,
    /// At a learned rate; probing above it once its hold has passed.
    Paced(Probe),
    /// Lowered at `since` on a refused share above the noise; the calls sent since decide.
    Testing(Test),
}

impl Phase {
    /// At a learned rate, probing above it from `start` on.
    fn probing_from(start: Instant) -> Phase {
        Phase::Paced(Probe { counted_until: start, steps: 0 })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Probe {
    /// The whole seconds of probing counted so far, and the steps taken.
    counted_until: Instant,
    steps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Test {
    since: Instant,
    refused_share: f64,
    /// The spread of `refused_share` (see [`Tally::spread`]), over this many records.
    spread: f64,
    records: u64,
    /// Whether a call refused then had many entries refused one by one: the lumps in the share
    /// were a quota's, not noise's.
    quota_shaped: bool,
    /// What the calls sent since the decrease were answered.
    after: Tally,
    /// The rates and phase to go back to if the refusals turn out to be noise.
    before: Rates,
    before_learned: Rates,
    was_paced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct NoiseFloor {
    share: f64,
    /// The spread of `share`'s measurement: refusals that come by the call are lumpy.
    spread: f64,
    measured_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Answered {
    answered_at: Instant,
    answer: CallAnswer,
}

/// What the answers of a span add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    sent_records: u64,
    refused: u64,
    /// Of `refused`, the records of calls throttled whole.
    refused_whole: u64,
    /// Calls answered entry by entry with many of their entries refused: a quota's shape (see
    /// [`CallAnswer::refused_by_entry_in_bulk`]).
    refused_by_entry_in_bulk: u64,
    accepted: CallSize,
    /// Calls that had anything accepted.
    accepting_calls: u64,
    calls: usize,
    /// When the earliest call counted was sent.
    first_sent: Option<Instant>,
    /// Sums for the spread of the refused share. Refusals come by the call (a call throttled
    /// whole refuses all its records at once), so the call, not the record, is the sample:
    /// Σ refused², Σ refused × sent, Σ sent².
    refused_squared: f64,
    refused_by_sent: f64,
    sent_squared: f64,
}

impl Tally {
    fn add(&mut self, answer: &CallAnswer) {
        self.calls += 1;
        self.first_sent = Some(self.first_sent.map_or(answer.sent_at, |first| first.min(answer.sent_at)));
        self.sent_records += answer.sent.records;
        self.refused += answer.refused_for_throughput;
        if answer.throttled_whole {
            self.refused_whole += answer.refused_for_throughput;
        }
        if answer.refused_by_entry_in_bulk() {
            self.refused_by_entry_in_bulk += 1;
        }
        if answer.accepted.records > 0 {
            self.accepted = self.accepted.plus(answer.accepted);
            self.accepting_calls += 1;
        }
        let (refused, sent) = (answer.refused_for_throughput as f64, answer.sent.records as f64);
        self.refused_squared += refused * refused;
        self.refused_by_sent += refused * sent;
        self.sent_squared += sent * sent;
    }

    fn refused_share(&self) -> f64 {
        if self.sent_records == 0 {
            0.0
        } else {
            self.refused as f64 / self.sent_records as f64
        }
    }

    /// The standard error of [`Tally::refused_share`], taking each call as one sample (the
    /// ratio estimator's: √(Σ (refusedᵢ − share × sentᵢ)²) / Σ sentᵢ).
    fn spread(&self) -> f64 {
        if self.sent_records == 0 {
            return 1.0;
        }
        self.scatter().sqrt() / self.sent_records as f64
    }

    /// Σ (refusedᵢ − share × sentᵢ)² over the calls, corrected for the share being estimated
    /// from them.
    fn scatter(&self) -> f64 {
        let share = self.refused_share();
        let squares = self.refused_squared - 2.0 * share * self.refused_by_sent + share * share * self.sent_squared;
        let calls = self.calls as f64;
        let correction = if calls > 1.0 { calls / (calls - 1.0) } else { 1.0 };
        squares.max(0.0) * correction
    }

    /// Whether the refusals look like records refused one by one, each at random: over enough
    /// calls and refusals, none throttled whole or refused in bulk, and the calls' refused
    /// counts scattered no more than [`SCATTER_AT_MOST`] times a binomial's (share × (1 −
    /// share) × records sent). That is noise's shape, and a quota's never: a quota refuses the
    /// calls that come after its second ran out, in lumps. Calls throttled whole at random are
    /// lumps too, and a calls quota refuses whole calls: those are left to a test.
    fn refused_as_single_records(&self) -> bool {
        let share = self.refused_share();
        let binomial = share * (1.0 - share) * self.sent_records as f64;
        self.refused_whole == 0
            && self.refused_by_entry_in_bulk == 0
            && self.calls >= QUOTA_AT_ONCE_CALLS
            && self.refused >= SINGLE_REFUSALS_AT_LEAST
            && self.sent_records >= SHAPE_RECORDS_PER_CALL_AT_LEAST * self.calls as u64
            && binomial > 0.0
            && self.scatter() <= SCATTER_AT_MOST * binomial
    }

    /// Seconds from the earliest call counted to `now`.
    fn covers(&self, now: Instant) -> Duration {
        self.first_sent.map_or(Duration::ZERO, |first| now.saturating_duration_since(first))
    }
}

/// What a decrease measured: the accepted traffic answered in the second before it.
#[derive(Debug, Clone, Copy)]
struct Learning {
    /// When the refused call was sent: answers that come later for calls sent earlier were
    /// overtaken by the refusal, and belong to the measurement.
    refused_call_sent_at: Instant,
    /// When the refusal came: overtaken answers count only within [`WINDOW`] of it.
    refused_at: Instant,
    /// The rates in force before the decrease.
    before: Rates,
    /// Accepted traffic and accepting calls over the `seconds` before the decrease (a young
    /// governor's whole life: what a quota took in a second that began with the first call).
    measured: CallSize,
    calls: u64,
    seconds: f64,
    /// Whether the calls rate is lowered too.
    calls_limited: bool,
    /// Divides the accepted rate to give the send rate the quota takes.
    kept_share: f64,
}

impl RateGovernor {
    pub fn new(ceiling: Rates) -> RateGovernor {
        RateGovernor {
            ceiling,
            current: ceiling,
            learned: Rates::default(),
            phase: Phase::Free,
            last_lowered: None,
            noise: None,
            next_send: Schedules::default(),
            last_held_back: None,
            answers: VecDeque::new(),
            last_learning: None,
            scouting: None,
        }
    }

    /// A governor that expects the stream's quota to be `default` (a region's Direct PUT
    /// default, which most streams keep): until a rate is learned, the call that would take the
    /// last second's sending past it goes alone, and the others wait for its answer. Refused at
    /// its end, about as far as it went past `default`, it met the quota: the rates are lowered
    /// at once, and the calls that would have gone into the spent second (those in flight at an
    /// unpaced start, 8 of 9 throttled calls at 1 MiB/s) never go. Answered in any other way
    /// (accepted, refused at random, throttled whole, failed), the quota is not the default, or
    /// the answer cannot say so: sending goes on unpaced, as without a default. The price is a
    /// round trip, once.
    pub fn expecting(mut self, default: Rates) -> RateGovernor {
        self.scouting = Some(Scouting { default, booked: VecDeque::new(), scout: None });
        self
    }

    /// Whether a call past the default quota is out at `now`, its answer (and those of the calls
    /// booked before it) awaited: for at most [`SCOUT_WAITED_FOR_AT_MOST`]. Calls waiting for
    /// it are woken when it comes.
    pub fn is_scouting(&self, now: Instant) -> bool {
        self.scout_awaited(now).is_some()
    }

    /// While [`RateGovernor::is_scouting`], how much longer the scout's answer is waited for
    /// (not at all once a rate is learned: it knows more than any default).
    pub fn scout_awaited(&self, now: Instant) -> Option<Duration> {
        if !matches!(self.phase, Phase::Free) {
            return None;
        }
        let scout = self.scouting.as_ref()?.scout?;
        SCOUT_WAITED_FOR_AT_MOST.checked_sub(now.saturating_duration_since(scout.sent_at)).filter(|left| !left.is_zero())
    }

    /// A call booked at `sent_at` got no answer the governor can read (a network error, a 5xx,
    /// records refused as invalid): it is waited for no longer; if it was the scout, what the
    /// default says stays unknown, and sending goes on unpaced.
    pub fn unanswered(&mut self, sent_at: Instant) {
        self.scout_heard(sent_at);
    }

    /// The rates in force.
    pub fn rates(&self) -> Rates {
        self.current
    }

    /// Whether a learned rate is in force (a quota was found): the pace, not round trips,
    /// bounds delivery then.
    pub fn is_pacing(&self) -> bool {
        !matches!(self.phase, Phase::Free)
    }

    /// The share of records taken for noise, if one was measured.
    pub fn noise_floor(&self) -> Option<f64> {
        self.noise.map(|noise| noise.share)
    }

    /// Books a call of `size` to go at `now` if the pace lets it go then; otherwise says how
    /// long to wait before asking again. A call is booked when it goes, not when it starts to
    /// wait: a change of pace reaches the calls already waiting. Booked ahead, up to 16 calls
    /// waiting in a route (a second of traffic at 1 MiB/s) went out at the old rate after a
    /// refusal had lowered it, into the second the quota had spent, and after a test was undone
    /// they went on top of the rate restored.
    pub fn try_reserve(&mut self, size: CallSize, now: Instant) -> Result<(), Duration> {
        self.probe(now);
        let go_at = self.next_send.0.iter().flatten().fold(now, |latest, &next| latest.max(next));
        if go_at > now {
            self.last_held_back = Some(now);
            return Err(go_at - now);
        }
        self.scout_turn(size, now)?;
        let costs = [
            self.current.bytes.map(|rate| size.bytes as f64 / rate),
            self.current.records.map(|rate| size.records as f64 / rate),
            self.current.calls.map(|rate| 1.0 / rate),
        ];
        // A pace that went unused for a while lends at most a burst's worth of it.
        let go_from = now.checked_sub(BURST).unwrap_or(now);
        for (next, cost) in self.next_send.0.iter_mut().zip(costs) {
            *next = cost.map(|cost| next.map_or(go_from, |next| next.max(go_from)) + Duration::from_secs_f64(cost.min(3600.0)));
        }
        Ok(())
    }

    /// Before any rate is learned, books a call against the default quota: past it, the call
    /// goes only when no scout is out, and becomes the scout; while one is out, says how long
    /// its answer may still be waited for.
    fn scout_turn(&mut self, size: CallSize, now: Instant) -> Result<(), Duration> {
        if !matches!(self.phase, Phase::Free) {
            // A learned rate knows more than any default.
            self.scouting = None;
        }
        let Some(scouting) = self.scouting.as_mut() else { return Ok(()) };
        if scouting.scout.is_some() {
            if let Some(left) = self.scout_awaited(now) {
                return Err(left);
            }
            self.scouting = None;
            return Ok(());
        }
        while scouting.booked.front().is_some_and(|booking| now.saturating_duration_since(booking.sent_at) >= WINDOW) {
            scouting.booked.pop_front();
        }
        let before = scouting.booked.iter().fold(CallSize::default(), |sum, booking| sum.plus(booking.size));
        let past_the_default = records_past(scouting.default, before, scouting.booked.len() as u64, size);
        scouting.booked.push_back(Booking { sent_at: now, size, answered: false });
        if past_the_default > 0 {
            scouting.scout = Some(Scout { sent_at: now, past_the_default, answered: false });
        }
        Ok(())
    }

    /// While scouting, whether `answer` shows a quota by its refused end: the scout's, about as
    /// far as it went past the default, or another call's over [`TAIL_AT_LEAST`] entries. Then
    /// scouting is over; it is also over once the scout and every call booked before it are
    /// answered.
    fn refused_at_its_end(&mut self, answer: &CallAnswer) -> bool {
        let Some(scouting) = self.scouting.as_ref() else { return false };
        let shown = match scouting.scout {
            Some(scout) if scout.sent_at == answer.sent_at => answer.refused_past(scout.past_the_default),
            _ => !answer.throttled_whole && answer.refused_at_the_end >= TAIL_AT_LEAST,
        };
        if shown {
            self.scouting = None;
        } else {
            self.scout_heard(answer.sent_at);
        }
        shown
    }

    /// The call booked at `sent_at` was heard of: once the scout and the calls booked before it
    /// all were, without a quota shown, the default is settled and sending goes on unpaced.
    fn scout_heard(&mut self, sent_at: Instant) {
        let Some(scouting) = self.scouting.as_mut() else { return };
        if let Some(booking) = scouting.booked.iter_mut().find(|booking| booking.sent_at == sent_at) {
            booking.answered = true;
        }
        let Some(scout) = scouting.scout.as_mut() else { return };
        scout.answered |= scout.sent_at == sent_at;
        let before_it_answered =
            scouting.booked.iter().take_while(|booking| booking.sent_at < scout.sent_at).all(|booking| booking.answered);
        if scout.answered && before_it_answered {
            self.scouting = None;
        }
    }

    /// The most one call should carry at the pace in force: [`BURST`]'s share of the byte and
    /// record rates, so that no call is a burst by itself (a stream taking 1 MiB a second can
    /// never take a 2 MiB call whole). Unlimited before any quota or ceiling.
    pub fn call_allowance(&self) -> CallSize {
        let share = |rate: Option<f64>| rate.map_or(u64::MAX, |rate| (rate * BURST.as_secs_f64()) as u64);
        CallSize { bytes: share(self.current.bytes), records: share(self.current.records) }
    }

    /// Whether refusals are faults of single calls: the destination accepted something in the
    /// last second, and refused less than a quarter of what was sent (more is a quota being hit,
    /// or an outage: resending at once would only be refused again). Then a failed call is
    /// worth sending again at once, not backing off from.
    pub fn refusals_are_rare(&self, now: Instant) -> bool {
        let mut tally = Tally::default();
        for answered in self.answers.iter().rev().take_while(|answered| now.saturating_duration_since(answered.answered_at) < WINDOW) {
            tally.add(&answered.answer);
        }
        tally.accepted.records > 0 && tally.refused_share() < QUOTA_AT_ONCE
    }

    /// The destination answered a call: `answer` says what it took and what it refused for
    /// throughput. Returns the change of pace this decided, if any.
    pub fn answered(&mut self, answer: CallAnswer, now: Instant) -> Option<PaceChange> {
        self.forget_before(now);
        self.answers.push_back(Answered { answered_at: now, answer });
        if answer.accepted.records > 0 {
            self.complete_learning(answer, now);
        }
        let refused_at_its_end = self.refused_at_its_end(&answer);
        if let Phase::Testing(test) = &mut self.phase {
            // The calls sent at the lower rate are the test's evidence, however long it waits.
            if answer.sent_at > test.since {
                test.after.add(&answer);
            }
        }
        match self.phase {
            Phase::Testing(test) => self.judge(test, now),
            Phase::Free | Phase::Paced(_) if answer.refused_for_throughput > 0 => {
                let sign = if refused_at_its_end {
                    QuotaSign::RefusedAtItsEnd
                } else if answer.refused_in_full() {
                    QuotaSign::RefusedInFull
                } else {
                    QuotaSign::None
                };
                self.consider_refusals(answer.sent_at, sign, now)
            }
            Phase::Free | Phase::Paced(_) => None,
        }
    }

    /// Refusals came: lowers the rates when the share refused over the last second is more
    /// than the noise floor explains.
    fn consider_refusals(&mut self, refused_call_sent_at: Instant, sign: QuotaSign, now: Instant) -> Option<PaceChange> {
        // One overload shows as several refusals in a row: lower once per window.
        if self.last_lowered.is_some_and(|last| now.saturating_duration_since(last) < WINDOW) {
            return None;
        }
        let tally = self.tally();
        let share = tally.refused_share();
        // A quarter refused is more than any noise floor is taken to hide (a floor of a sixth
        // or more has a tolerance above it).
        // A refused end while scouting is a quota's shape whatever the share (a noise floor
        // recognized in the first calls can hide a spent second's first refusals).
        if share <= self.tolerance(now) && share < QUOTA_AT_ONCE && sign != QuotaSign::RefusedAtItsEnd {
            return None;
        }
        // A moderate share needs two seconds of sending behind it, the last one whole (not a
        // restart's first seconds, whose ramp would set the test's rate, nor the pause after a
        // decrease, which would measure a second by a fraction of it).
        // Over enough calls, or by more than its spread: on a quiet route, one call throttled
        // whole among three is a third of what was sent, and says little.
        // Refused in full says "a quota" where none is known yet (an unpaced start sends many
        // calls into the spent second); at a learned rate, a probe's step over the quota does
        // the same, and is the test's to measure, not a second decrease's.
        let unpaced = matches!(self.phase, Phase::Free);
        let at_once = (sign != QuotaSign::None && unpaced)
            || share >= QUOTA_AT_ONCE && (tally.calls >= QUOTA_AT_ONCE_CALLS || share - tally.spread() >= QUOTA_AT_ONCE);
        let two_seconds = self.tally_over(MEASURED_OVER);
        if !at_once && (tally.covers(now) < WINDOW.mul_f64(0.9) || two_seconds.covers(now) < MEASURED_OVER.mul_f64(0.95)) {
            return None;
        }
        if tally.accepted.records == 0 {
            return None;
        }
        // The first verdict of a governor that never measured a floor (a start, a restart)
        // comes from the refusals' shape, when it is noise's: a test costs a second at 10-15 %
        // below the pace, a tenth of a short run (issue 17's noise rows) and more of a crash
        // loop's restarts. A floor that outlives its memory is tested by the rate as before, so
        // a destination whose quota refused like noise would be found out within
        // [`NOISE_MEMORY`], and meanwhile would still take its whole quota (what is refused is
        // resent; a quarter refused is a quota at once).
        if !at_once && self.noise.is_none() && tally.refused_as_single_records() {
            self.noise = Some(NoiseFloor { share, spread: tally.spread(), measured_at: now });
            return Some(self.change(PaceDecision::NoiseRecognized, share));
        }
        let before = self.current;
        let before_learned = self.learned;
        let was_paced = matches!(self.phase, Phase::Paced(_));
        let kept_share = 1.0 - self.fresh_noise(now).map_or(0.0, |noise| noise.share);
        // Near a quota (a moderate share) the rate is measured over two seconds: a sliding
        // second against a stream's fixed ones can hold a call of the second before, as much as
        // the 5 % a decrease leaves below the quota, and a test sent above the quota would take
        // the quota for noise. Far over it, the last second says enough, and says it sooner.
        let (measured, seconds) = if !at_once { (two_seconds, MEASURED_OVER.as_secs_f64()) } else { (tally, 1.0) };
        let learning = Learning {
            refused_call_sent_at,
            refused_at: now,
            before,
            measured: measured.accepted,
            calls: measured.accepting_calls,
            seconds,
            // Calls throttled whole are how a stream says "too many calls"; records refused
            // inside answered calls are about bytes and records, not the number of calls.
            calls_limited: tally.refused_whole * 2 >= tally.refused,
            kept_share,
        };
        self.current = learning.rates(self.ceiling);
        self.last_learning = Some(learning);
        self.pay_for_the_last_second(tally);
        self.learned = self.current;
        self.last_lowered = Some(now);
        let decision = if at_once {
            self.phase = Phase::probing_from(now + HOLD);
            PaceDecision::Lowered
        } else {
            self.phase = Phase::Testing(Test {
                since: now,
                refused_share: share,
                spread: tally.spread(),
                records: tally.sent_records,
                quota_shaped: tally.refused_by_entry_in_bulk > 0,
                after: Tally::default(),
                before,
                before_learned,
                was_paced,
            });
            PaceDecision::Testing
        };
        Some(self.change(decision, share))
    }

    /// During a test: once the calls sent at the lower rate say enough, decides whether the
    /// refused share fell with the rate (a quota) or not (noise, and the old rates come back).
    fn judge(&mut self, test: Test, now: Instant) -> Option<PaceChange> {
        let tally = test.after;
        if now.saturating_duration_since(test.since) < TEST_SPAN || tally.calls < TEST_CALLS {
            return None;
        }
        let share = tally.refused_share();
        // Both shares are estimates: a verdict needs a difference larger than their spread.
        let spread = tally.spread();
        let both = (spread.powi(2) + test.spread.powi(2)).sqrt();
        // More refused at a lower rate is neither noise (the same share) nor the quota the test
        // measured (less): the quota fell meanwhile (another writer). So is a share no noise has.
        let rose = share - test.refused_share > 3.0 * both || share > ROSE_TO * test.refused_share + SMALLEST_SIGNAL;
        if share >= QUOTA_AT_ONCE || rose {
            self.phase = Phase::probing_from(now + HOLD);
            self.last_lowered = None;
            let refused_call_sent_at = self.answers.back().map_or(now, |answered| answered.answer.sent_at);
            return self.consider_refusals(refused_call_sent_at, QuotaSign::None, now);
        }
        // Where the share refused before came in lumps, its own spread is large, and a fall by
        // less than three times that spread is a fall noise could give: calls throttled whole at
        // random come in lumps too. But noise does not refuse a quarter of a call's entries one by one,
        // a quota refuses every entry past it: when such a call made the lumps, the question is
        // only whether the calls sent since are refused less, and their own spread answers it
        // (a test of one second, not of five, at 10 % below the pace).
        let against = if test.quota_shaped { spread } else { both };
        let fell = share < FELL_TO * test.refused_share && test.refused_share - share > 3.0 * against;
        // A quota predicts that, below it, only the noise known before is left. A floor that
        // has outlived its memory is what is being tested: it predicts nothing.
        let floor_before = self.fresh_noise(now).map_or(0.0, |noise| noise.share);
        let persisted = share - floor_before > 3.0 * spread + SMALLEST_SIGNAL && share >= FELL_TO * test.refused_share;
        let long_enough = now.saturating_duration_since(test.since) >= TEST_LONGEST;
        let fell = match (fell, persisted) {
            (true, _) => true,
            (false, true) => false,
            // Too few calls to tell yet: the test goes on (it costs 5 % of the rate at most),
            // and at its end the point estimates decide.
            (false, false) if !long_enough => return None,
            (false, false) => share < FELL_TO * test.refused_share,
        };
        let decision = if fell {
            // What is still refused below the quota is the noise.
            self.noise = Some(NoiseFloor { share, spread, measured_at: now });
            // The hold counts from the decrease; probing starts no earlier than this verdict.
            let probe_from = (test.since + HOLD).max(now);
            self.phase = Phase::probing_from(probe_from);
            PaceDecision::QuotaConfirmed
        } else {
            // Both seconds measured the same noise: together they measure it better.
            let (before, after) = (test.records as f64, tally.sent_records as f64);
            let total = (before + after).max(1.0);
            self.noise = Some(NoiseFloor {
                share: (test.refused_share * before + share * after) / total,
                spread: ((test.spread * before).powi(2) + (spread * after).powi(2)).sqrt() / total,
                measured_at: now,
            });
            self.last_learning = None;
            self.current = Rates {
                bytes: larger(self.current.bytes, test.before.bytes),
                records: larger(self.current.records, test.before.records),
                calls: larger(self.current.calls, test.before.calls),
            };
            self.learned = test.before_learned;
            self.next_send = Schedules::default();
            self.phase = if test.was_paced { Phase::probing_from(now + HOLD) } else { Phase::Free };
            PaceDecision::NoiseRestored
        };
        Some(self.change(decision, share))
    }

    fn change(&self, decision: PaceDecision, refused_share: f64) -> PaceChange {
        PaceChange { decision, rates: self.current, refused_share, noise_floor: self.noise.map_or(0.0, |noise| noise.share) }
    }

    /// The largest refused share the noise floor explains, while the floor is fresh: half as
    /// much again (noise is never exactly steady), or three times the spread it was measured
    /// with (noise that comes as whole calls refused is lumpy).
    fn tolerance(&self, now: Instant) -> f64 {
        match self.fresh_noise(now) {
            Some(noise) => noise.share + (noise.share * 0.5).max(3.0 * noise.spread).max(SMALLEST_SIGNAL),
            None => SMALLEST_SIGNAL,
        }
    }

    /// The noise floor, while it is within [`NOISE_MEMORY`] of its measurement.
    fn fresh_noise(&self, now: Instant) -> Option<NoiseFloor> {
        self.noise.filter(|noise| now.saturating_duration_since(noise.measured_at) < NOISE_MEMORY)
    }

    /// A call sent before the refused one and answered after it belongs to what the decrease
    /// measured: without it the rate is learned short by the calls that were overtaken (one in
    /// five of a second's calls, measured with four in flight).
    fn complete_learning(&mut self, answer: CallAnswer, now: Instant) {
        let Some(learning) = self.last_learning.as_mut() else { return };
        if now.saturating_duration_since(learning.refused_at) >= WINDOW {
            self.last_learning = None;
            return;
        }
        if answer.sent_at >= learning.refused_call_sent_at {
            return;
        }
        learning.measured = learning.measured.plus(answer.accepted);
        learning.calls += 1;
        let corrected = learning.rates(self.ceiling);
        self.current = Rates {
            bytes: larger(self.current.bytes, corrected.bytes),
            records: larger(self.current.records, corrected.records),
            calls: larger(self.current.calls, corrected.calls),
        };
        self.learned = self.current;
    }

    /// What the last second carried already spent the budget from its first call on: the next
    /// call waits until that traffic is paid for at the new rate.
    fn pay_for_the_last_second(&mut self, tally: Tally) {
        let spent = [
            self.current.bytes.map(|rate| tally.accepted.bytes as f64 / rate),
            self.current.records.map(|rate| tally.accepted.records as f64 / rate),
            self.current.calls.map(|rate| tally.accepting_calls as f64 / rate),
        ];
        let Some(latest) = self.answers.back().map(|answered| answered.answered_at) else { return };
        let Some(oldest) =
            self.answers.iter().map(|answered| answered.answered_at).find(|&at| latest.saturating_duration_since(at) < WINDOW)
        else {
            return;
        };
        for (next, spent) in self.next_send.0.iter_mut().zip(spent) {
            if let Some(spent) = spent {
                let paid_until = oldest + Duration::from_secs_f64(spent.min(3600.0));
                *next = Some(next.map_or(paid_until, |next| next.max(paid_until)));
            }
        }
    }

    /// Probing: after [`HOLD`] at a learned rate, every whole second the pace held calls back,
    /// the rates grow by a step that doubles each time, from 1 % of the learned rate.
    fn probe(&mut self, now: Instant) {
        let Phase::Paced(probe) = self.phase else { return };
        let mut probe = probe;
        while now >= probe.counted_until + WINDOW {
            probe.counted_until += WINDOW;
            // A second in which the pace held nothing back says nothing of a higher rate.
            let limited = self.last_held_back.is_some_and(|held| held + WINDOW >= probe.counted_until);
            if !limited {
                continue;
            }
            let step = FIRST_STEP * f64::from(1u32 << probe.steps.min(16));
            probe.steps += 1;
            let grow = |current: Option<f64>, learned: Option<f64>, ceiling: Option<f64>| match (current, learned) {
                (Some(current), Some(unit)) => {
                    // At most a quarter of the rate in force a second: from a rate learned
                    // far too low (at the floor, on a quiet route), growth is geometric.
                    let grown = current + (unit * step).min(current * LARGEST_STEP);
                    Some(ceiling.map_or(grown, |ceiling| grown.min(ceiling)))
                }
                (current, _) => current,
            };
            self.current = Rates {
                bytes: grow(self.current.bytes, self.learned.bytes, self.ceiling.bytes),
                records: grow(self.current.records, self.learned.records, self.ceiling.records),
                calls: grow(self.current.calls, self.learned.calls, self.ceiling.calls),
            };
        }
        self.phase = Phase::Paced(probe);
    }

    /// What the answers of the last second add up to.
    fn tally(&self) -> Tally {
        self.tally_over(WINDOW)
    }

    /// What the answers of the last `span` (at most [`MEASURED_OVER`]) add up to.
    fn tally_over(&self, span: Duration) -> Tally {
        let mut tally = Tally::default();
        let latest = self.answers.back().map(|answered| answered.answered_at);
        for answered in &self.answers {
            if latest.is_some_and(|latest| latest.saturating_duration_since(answered.answered_at) < span) {
                tally.add(&answered.answer);
            }
        }
        tally
    }

    fn forget_before(&mut self, now: Instant) {
        while self.answers.front().is_some_and(|answered| now.saturating_duration_since(answered.answered_at) >= MEASURED_OVER) {
            self.answers.pop_front();
        }
    }
}

impl Learning {
    /// The rates this measurement gives: 95 % of the accepted rate, as a send rate (divided by
    /// the share noise leaves), and at most 90 % of what was in force before; never above the
    /// ceiling, never below the floor.
    fn rates(&self, ceiling: Rates) -> Rates {
        let per_second = |amount: u64| amount as f64 / self.seconds;
        // A second measured by a sliding window against a stream's fixed ones can hold a call
        // of the second before: the rates also fall at least 10 % below the pace in force, so
        // that a test is always sent below what was refused.
        let lowered = |before: Option<f64>, measured: f64, ceiling: Option<f64>, floor: Option<f64>| {
            let target = before.map_or(measured * DECREASE_TO, |before| (measured * DECREASE_TO).min(before * AT_MOST_OF_BEFORE));
            Some(target.max(floor.unwrap_or(1.0)).min(ceiling.unwrap_or(f64::MAX)))
        };
        let kept = self.kept_share.max(0.5);
        Rates {
            bytes: lowered(self.before.bytes, per_second(self.measured.bytes) / kept, ceiling.bytes, FLOOR.bytes),
            records: lowered(self.before.records, per_second(self.measured.records) / kept, ceiling.records, FLOOR.records),
            calls: if self.calls_limited {
                lowered(self.before.calls, per_second(self.calls), ceiling.calls, FLOOR.calls)
            } else {
                self.before.calls
            },
        }
    }
}

impl CallAnswer {
    /// A quarter or more of the entries of a call of [`BULK_CALL_AT_LEAST`] records refused for
    /// throughput, in an answer given entry by entry: what a quota running out does to the call
    /// that meets it and to those after it in the same second. Random refusals of single
    /// records, up to 10 % of them, refuse that many by a chance of one in a million for a call
    /// of 128 records (5.6 standard deviations), one in 10⁹ at 200, never at 500.
    fn refused_by_entry_in_bulk(&self) -> bool {
        !self.throttled_whole
            && self.sent.records >= BULK_CALL_AT_LEAST
            && self.refused_for_throughput as f64 >= QUOTA_AT_ONCE * self.sent.records as f64
    }

    /// Every entry of a call of [`REFUSED_IN_FULL_AT_LEAST`] records or more refused for
    /// throughput, in an answer given entry by entry (a call throttled whole is how noise
    /// refuses calls too).
    fn refused_in_full(&self) -> bool {
        !self.throttled_whole
            && self.sent.records >= REFUSED_IN_FULL_AT_LEAST
            && self.accepted.records == 0
            && self.refused_for_throughput == self.sent.records
    }

    /// Whether the call's end was refused ([`CallAnswer::refused_at_the_end`]) over at least
    /// [`SCOUT_TAIL_AT_LEAST`] entries and at least half of the `past` records that lay past a
    /// quota: a quota running out within the call. Records refused at random are scattered, and
    /// a call throttled whole is how noise refuses calls too.
    fn refused_past(&self, past: u64) -> bool {
        let tail = self.refused_at_the_end;
        !self.throttled_whole && tail >= SCOUT_TAIL_AT_LEAST && 2 * tail >= past
    }
}

/// Of a call of `size` booked after `before` (in `calls` calls) over the last second, about how
/// many records lie past `default` by its bytes, records or calls: 0 when it stays within.
fn records_past(default: Rates, before: CallSize, calls: u64, size: CallSize) -> u64 {
    // The share of this call past a limit: the amount over it, out of what the call adds.
    let share_past = |limit: Option<f64>, before: u64, adds: u64| match limit {
        Some(limit) if adds > 0 => ((before + adds) as f64 - limit).clamp(0.0, adds as f64) / adds as f64,
        _ => 0.0,
    };
    let share = share_past(default.bytes, before.bytes, size.bytes)
        .max(share_past(default.records, before.records, size.records))
        .max(share_past(default.calls, calls, 1));
    (share * size.records as f64).ceil() as u64
}

impl CallSize {
    fn plus(self, other: CallSize) -> CallSize {
        CallSize { bytes: self.bytes + other.bytes, records: self.records + other.records }
    }
}

/// The larger of two rates; `None` is unlimited, so the larger.
fn larger(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a?.max(b?))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RateGovernor {
        /// How long a call of `size` asked for at `now` waits for the pace, booked when it goes
        /// (as the courier does, asking again after each wait).
        fn reserve(&mut self, size: CallSize, now: Instant) -> Duration {
            let mut at = now;
            while let Err(wait) = self.try_reserve(size, at) {
                at += wait;
            }
            at - now
        }
    }

    const RECORD_BYTES: u64 = 146;
    const BATCH_RECORDS: u64 = 500;

    /// A simulated stream: a per-second byte quota counted in fixed windows (which may change
    /// at a given second), records refused at random, and calls throttled whole at random.
    #[derive(Clone, Copy, Default)]
    struct Stream {
        quota_bytes: Option<u64>,
        /// From this second on, the quota is this.
        quota_change: Option<(u64, u64)>,
        refused_records: f64,
        throttled_calls: f64,
    }

    /// What a simulated run saw.
    #[derive(Debug, Default)]
    struct Run {
        /// Bytes accepted in each second of the run.
        accepted_per_second: Vec<u64>,
        calls: u64,
        /// Calls that met the quota (whole or in part), by the second they were made in.
        quota_throttled_per_second: Vec<u64>,
    }

    impl Run {
        fn accepted(&self, seconds: std::ops::Range<usize>) -> u64 {
            self.accepted_per_second[seconds].iter().sum()
        }

        fn quota_throttled(&self, seconds: std::ops::Range<usize>) -> u64 {
            self.quota_throttled_per_second[seconds].iter().sum()
        }
    }

    /// xorshift64, seeded: reproducible refusals.
    struct Random(u64);

    impl Random {
        fn chance(&mut self, probability: f64) -> bool {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % 1_000_000) as f64 / 1_000_000.0 < probability
        }
    }

    /// Sends batches of 500 seed-sized records to `stream` for `seconds`, one call at a time,
    /// each costing 1 ms and 2 µs a record (a client's CPU and round trip); refused records
    /// are sent again at once, as the courier does. `governed: false` sends unpaced (the best
    /// any governor could do against noise).
    fn simulate(stream: Stream, seconds: u64, ceiling: Rates, governed: bool) -> Run {
        let start = Instant::now();
        let mut governor = RateGovernor::new(ceiling);
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let mut run =
            Run { accepted_per_second: vec![0; seconds as usize], quota_throttled_per_second: vec![0; seconds as usize], ..Run::default() };
        let mut now = start;
        let (mut window, mut used) = (0, 0);
        let mut pending = 0;
        loop {
            if pending == 0 {
                pending = BATCH_RECORDS;
            }
            let sent = CallSize { bytes: pending * RECORD_BYTES, records: pending };
            if governed {
                now += governor.reserve(sent, now);
            }
            let sent_at = now;
            now += Duration::from_micros(1_000 + 2 * pending);
            let second = now.duration_since(start).as_secs();
            if second >= seconds {
                return run;
            }
            if second != window {
                (window, used) = (second, 0);
            }
            let quota = match stream.quota_change {
                Some((from, quota)) if second >= from => Some(quota),
                _ => stream.quota_bytes,
            };
            run.calls += 1;
            let mut accepted = 0;
            let mut met_quota = false;
            // Entries refused in a row at the call's end.
            let mut refused_at_the_end = 0;
            let throttled_whole = random.chance(stream.throttled_calls);
            if !throttled_whole {
                for _ in 0..pending {
                    refused_at_the_end += 1;
                    if random.chance(stream.refused_records) {
                        continue;
                    }
                    if quota.is_some_and(|quota| used + RECORD_BYTES > quota) {
                        met_quota = true;
                        continue;
                    }
                    refused_at_the_end = 0;
                    used += RECORD_BYTES;
                    accepted += 1;
                }
            }
            run.accepted_per_second[second as usize] += accepted * RECORD_BYTES;
            run.quota_throttled_per_second[second as usize] += u64::from(met_quota);
            let answer = CallAnswer {
                sent_at,
                sent,
                accepted: CallSize { bytes: accepted * RECORD_BYTES, records: accepted },
                refused_for_throughput: pending - accepted,
                throttled_whole,
                refused_at_the_end,
            };
            if let Some(change) = governor.answered(answer, now) {
                if std::env::var_os("RATE_TRACE").is_some() {
                    eprintln!(
                        "{:>7.3} s {:?} refused {:.4} noise {:.4} bytes/s {:?}",
                        now.duration_since(start).as_secs_f64(),
                        change.decision,
                        change.refused_share,
                        change.noise_floor,
                        change.rates.bytes.map(|rate| rate as u64)
                    );
                }
            }
            pending -= accepted;
        }
    }

    fn used_share(run: &Run, seconds: std::ops::Range<usize>, quota: u64) -> f64 {
        run.accepted(seconds.clone()) as f64 / (seconds.len() as f64 * quota as f64)
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn random_refusals_cost_only_their_share() {
        for (refused_records, throttled_calls) in [(0.01, 0.0), (0.05, 0.0), (0.10, 0.0), (0.05, 0.05)] {
            let stream = Stream { refused_records, throttled_calls, ..Stream::default() };
            let governed = simulate(stream, 60, Rates::default(), true);
            let unpaced = simulate(stream, 60, Rates::default(), false);
            let ratio = governed.accepted(0..60) as f64 / unpaced.accepted(0..60) as f64;
            assert!(ratio >= 0.95, "{refused_records} of records, {throttled_calls} of calls refused: {ratio:.3} of the unpaced rate");
        }
    }

    #[test]
    fn at_a_per_second_quota_the_learned_rate_uses_most_of_it_with_few_throttled_calls() {
        for quota in [MIB, 5 * MIB] {
            let run = simulate(Stream { quota_bytes: Some(quota), ..Stream::default() }, 60, Rates::default(), true);
            let used = used_share(&run, 0..60, quota);
            let throttled = run.quota_throttled(0..60);
            assert!(used >= 0.9, "{quota}: used {:.1} % of the quota", used * 100.0);
            assert!(throttled * 20 <= run.calls, "{quota}: {throttled} of {} calls throttled", run.calls);
        }
    }

    #[test]
    fn at_a_quota_with_random_refusals_on_top_most_of_the_quota_is_still_used() {
        let quota = MIB;
        let run = simulate(Stream { quota_bytes: Some(quota), refused_records: 0.02, ..Stream::default() }, 60, Rates::default(), true);
        let used = used_share(&run, 0..60, quota);
        assert!(used >= 0.85, "used {:.1} % of the quota", used * 100.0);
        assert!(run.quota_throttled(0..60) * 20 <= run.calls, "{} of {} calls met the quota", run.quota_throttled(0..60), run.calls);
    }

    #[test]
    fn a_quota_halved_mid_run_is_followed_within_three_seconds() {
        let stream = Stream { quota_bytes: Some(2 * MIB), quota_change: Some((20, MIB)), ..Stream::default() };
        let run = simulate(stream, 40, Rates::default(), true);
        let throttled_after: Vec<u64> = run.quota_throttled_per_second[20..26].to_vec();
        // Throttling stops within 3 s of the change: at most one probe's refusal a second later.
        assert!(run.quota_throttled(23..26) <= 1, "calls meeting the quota each second from the change: {throttled_after:?}");
        let used = used_share(&run, 25..40, MIB);
        assert!(used >= 0.9, "used {:.1} % of the halved quota", used * 100.0);
    }

    #[test]
    fn a_quota_doubled_mid_run_is_found_within_thirty_seconds() {
        let stream = Stream { quota_bytes: Some(MIB), quota_change: Some((20, 2 * MIB)), ..Stream::default() };
        let run = simulate(stream, 60, Rates::default(), true);
        let reached = (20..55).find(|&second| used_share(&run, second..second + 5, 2 * MIB) >= 0.9);
        assert!(reached.is_some_and(|second| second <= 50), "90 % of the doubled quota reached at second {reached:?} (changed at 20)");
    }

    #[test]
    fn a_ceiling_is_never_passed() {
        let ceiling = Rates { bytes: Some(200_000.0), ..Rates::default() };
        let run = simulate(Stream::default(), 10, ceiling, true);
        assert!(run.accepted(0..10) as f64 <= 200_000.0 * 10.0 + (BATCH_RECORDS * RECORD_BYTES) as f64 * 2.0, "{run:?}");
    }

    const CALL: CallSize = CallSize { bytes: 73_000, records: 500 };

    /// An answer to a call of [`CALL`] sent at `sent_at` with `refused` records refused for throughput.
    fn answer(sent_at: Instant, refused: u64) -> CallAnswer {
        answer_of(CALL, sent_at, refused)
    }

    /// A call of `sent` sent at `sent_at` with `refused` of its records refused for throughput,
    /// the rest accepted (bytes in proportion).
    fn answer_of(sent: CallSize, sent_at: Instant, refused: u64) -> CallAnswer {
        let accepted = sent.records - refused;
        CallAnswer {
            sent_at,
            sent,
            accepted: CallSize { bytes: accepted * sent.bytes / sent.records, records: accepted },
            refused_for_throughput: refused,
            throttled_whole: false,
            refused_at_the_end: 0,
        }
    }

    /// Answers calls every `every` from `from` for `span`, each with `refused` records refused;
    /// returns the decisions taken and when the last call went.
    fn answer_calls(
        governor: &mut RateGovernor,
        from: Instant,
        span: Duration,
        every: Duration,
        refused: u64,
    ) -> (Vec<PaceDecision>, Instant) {
        answer_calls_refusing(governor, from, span, every, &mut |_| refused)
    }

    /// As [`answer_calls`], with `refused(n)` records refused in the `n`th call.
    fn answer_calls_refusing(
        governor: &mut RateGovernor,
        from: Instant,
        span: Duration,
        every: Duration,
        refused: &mut dyn FnMut(u64) -> u64,
    ) -> (Vec<PaceDecision>, Instant) {
        answer_calls_of(governor, CALL, from, span, every, refused)
    }

    #[test]
    fn refusals_that_do_not_fall_with_the_rate_are_noise_and_the_rate_before_comes_back() {
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        // One record in a hundred refused whatever the rate, in lumps: 50 entries of every
        // tenth call (a quota's shape, were it not for the rate; see the next test).
        let mut lumps = |call: u64| if call % 10 == 0 { 50 } else { 0 };
        let (decisions, now) = answer_calls_refusing(&mut governor, start, Duration::from_secs(4), Duration::from_millis(2), &mut lumps);
        assert_eq!(decisions, [PaceDecision::Testing, PaceDecision::NoiseRestored]);
        assert_eq!(governor.rates(), Rates::default(), "unpaced again");
        let noise = governor.noise_floor().expect("a noise floor");
        assert!((noise - 0.01).abs() < 0.002, "{noise}");
        // Within the floor's memory the same refusals change nothing; after it, they are tested once more.
        let (decisions, now) =
            answer_calls_refusing(&mut governor, now, NOISE_MEMORY - Duration::from_secs(5), Duration::from_millis(2), &mut lumps);
        assert_eq!(decisions, []);
        let (decisions, _) = answer_calls_refusing(&mut governor, now, Duration::from_secs(8), Duration::from_millis(2), &mut lumps);
        assert_eq!(decisions, [PaceDecision::Testing, PaceDecision::NoiseRestored]);
    }

    #[test]
    fn refusals_spread_as_single_records_are_noise_at_first_sight_and_tested_by_the_rate_when_the_floor_is_due() {
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        // 5 % of records refused one by one at random: the calls' refused counts scatter as a
        // binomial's, and the first verdict needs no second at a lower rate.
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let mut at_random = |_| (0..CALL.records).filter(|_| random.chance(0.05)).count() as u64;
        let (decisions, now) =
            answer_calls_refusing(&mut governor, start, Duration::from_secs(4), Duration::from_millis(2), &mut at_random);
        assert_eq!(decisions, [PaceDecision::NoiseRecognized]);
        assert_eq!(governor.rates(), Rates::default(), "never lowered");
        let noise = governor.noise_floor().expect("a noise floor");
        assert!((noise - 0.05).abs() < 0.005, "{noise}");
        // A floor that outlives its memory is tested by the rate, whatever the shape: a quota
        // that refused like noise would be found out then.
        let (decisions, _) =
            answer_calls_refusing(&mut governor, now, NOISE_MEMORY + Duration::from_secs(4), Duration::from_millis(2), &mut at_random);
        assert_eq!(decisions, [PaceDecision::Testing, PaceDecision::NoiseRestored]);
        // Refused by a quota at the end of each second (the last calls of a second lose a
        // tenth of their entries, fewer than the quarter of a bulk refusal): lumps, so a test.
        let mut governor = RateGovernor::new(Rates::default());
        let mut seconds_end = |call: u64| if call % 500 >= 450 { 50 } else { 0 };
        let (decisions, _) =
            answer_calls_refusing(&mut governor, start, Duration::from_secs(3), Duration::from_millis(2), &mut seconds_end);
        assert_eq!(decisions.first(), Some(&PaceDecision::Testing), "{decisions:?}");
    }

    /// Answers calls of `size` every `every` from `from` for `span`, `refused(n)` of the `n`th
    /// call's records refused for throughput; returns the decisions and when the last call went.
    fn answer_calls_of(
        governor: &mut RateGovernor,
        size: CallSize,
        from: Instant,
        span: Duration,
        every: Duration,
        refused: &mut dyn FnMut(u64) -> u64,
    ) -> (Vec<PaceDecision>, Instant) {
        let mut decisions = Vec::new();
        let mut now = from;
        let mut call = 0;
        while now < from + span {
            now += governor.reserve(size, now).max(every);
            let answer = answer_of(size, now, refused(call).min(size.records));
            decisions.extend(governor.answered(answer, now).map(|change| change.decision));
            call += 1;
        }
        (decisions, now)
    }

    #[test]
    fn calls_of_one_record_say_nothing_by_their_shape_and_a_quota_refusing_them_is_tested() {
        // 50 KiB lines, one a call, 200 calls a second; a quota refuses the last 30 calls of
        // each second. A call of one record is refused whole or not at all, whatever refuses
        // it, so its counts scatter as a binomial's: lumps and chance look alike.
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let one_line = CallSize { bytes: 50 << 10, records: 1 };
        let mut seconds_end = |call: u64| u64::from(call % 200 >= 170);
        let (decisions, _) =
            answer_calls_of(&mut governor, one_line, start, Duration::from_secs(4), Duration::from_millis(5), &mut seconds_end);
        assert!(matches!(decisions.first(), Some(PaceDecision::Testing | PaceDecision::Lowered)), "{decisions:?}");
        assert!(!decisions.contains(&PaceDecision::NoiseRecognized), "{decisions:?}");
    }

    #[test]
    fn a_quarter_refused_is_a_quota_at_once_even_above_a_loud_noise_floor() {
        // A floor of 20 % (a hot shard, say) makes a tolerance of 30 %; a quarter refused is
        // still more than noise is taken to refuse.
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let mut loud = |_| (0..CALL.records).filter(|_| random.chance(0.2)).count() as u64;
        let (decisions, now) = answer_calls_refusing(&mut governor, start, Duration::from_secs(4), Duration::from_millis(2), &mut loud);
        assert!(matches!(decisions.last(), Some(PaceDecision::NoiseRecognized | PaceDecision::NoiseRestored)), "{decisions:?}");
        assert_eq!(governor.rates(), Rates::default(), "unpaced");
        let floor = governor.noise_floor().expect("a noise floor");
        assert!((floor - 0.2).abs() < 0.01, "{floor}");
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let mut more = |_| (0..CALL.records).filter(|_| random.chance(0.28)).count() as u64;
        let (decisions, _) = answer_calls_refusing(&mut governor, now, Duration::from_secs(2), Duration::from_millis(2), &mut more);
        assert_eq!(decisions.first(), Some(&PaceDecision::Lowered), "{decisions:?}");
    }

    #[test]
    fn a_quarter_of_the_records_refused_is_a_quota_at_once_and_no_test_undoes_it() {
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let mut decisions = Vec::new();
        for call in 0..8 {
            let at = start + Duration::from_millis(5 * call);
            decisions.extend(governor.answered(answer(at, 300), at).map(|change| change.decision));
        }
        assert_eq!(decisions, [PaceDecision::Lowered], "at the first such answer, once a second");
        assert!(governor.rates().bytes.is_some());
    }

    #[test]
    fn a_call_refused_in_full_entry_by_entry_after_accepted_ones_is_a_quota_at_once() {
        // An unpaced start at a quota: ten calls take the second's bytes, the eleventh is
        // refused in every entry. Eight calls are in flight; waiting for a quarter of the
        // records refused would send more into the spent second.
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let mut decisions = Vec::new();
        for call in 0..11 {
            let at = start + Duration::from_micros(300 * call);
            let refused = if call == 10 { CALL.records } else { 0 };
            decisions.extend(governor.answered(answer(at, refused), at).map(|change| change.decision));
        }
        assert_eq!(decisions, [PaceDecision::Lowered]);
        let bytes = governor.rates().bytes.expect("a byte rate");
        assert!((bytes - 0.95 * 730_000.0).abs() < 1_000.0, "{bytes}");
        // At the learned rate, a probe's step over the quota refuses a call in full too: that is
        // for a test to measure, not a second decrease at once.
        let later = start + Duration::from_secs(3);
        for call in 0..11 {
            let at = later + Duration::from_millis(70 * call);
            let refused = if call == 10 { CALL.records } else { 0 };
            let decision = governor.answered(answer(at, refused), at).map(|change| change.decision);
            assert_ne!(decision, Some(PaceDecision::Lowered), "call {call}");
        }
        // The same call throttled whole (how noise refuses calls) is no such verdict.
        let mut governor = RateGovernor::new(Rates::default());
        for call in 0..11 {
            let at = start + Duration::from_micros(300 * call);
            let throttled_whole = call == 10;
            let answer = CallAnswer { throttled_whole, ..answer(at, if throttled_whole { CALL.records } else { 0 }) };
            assert_eq!(governor.answered(answer, at), None);
        }
    }

    #[test]
    fn on_a_quiet_route_one_call_throttled_whole_is_not_taken_for_a_quota_at_once() {
        // Two calls a second of 100 records; one throttled whole (another writer's burst), its
        // resend accepted: a third of what was sent refused, over three calls.
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let small = |sent_at: Instant, refused: bool| CallAnswer {
            sent_at,
            sent: CallSize { bytes: 14_600, records: 100 },
            accepted: if refused { CallSize::default() } else { CallSize { bytes: 14_600, records: 100 } },
            refused_for_throughput: if refused { 100 } else { 0 },
            throttled_whole: refused,
            refused_at_the_end: 0,
        };
        let mut decisions = Vec::new();
        for (millis, refused) in [(0, false), (500, true), (510, false)] {
            let at = start + Duration::from_millis(millis);
            decisions.extend(governor.answered(small(at, refused), at).map(|change| change.decision));
        }
        assert_eq!(decisions, [], "{:?}", governor.rates());
    }

    #[test]
    fn a_moderate_share_refused_in_the_first_second_waits_for_a_whole_second_of_evidence() {
        // After a restart, the first calls' refusals are too few to tell a quota from noise.
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let (decisions, _) = answer_calls(&mut governor, start, Duration::from_millis(900), Duration::from_millis(10), 20);
        assert_eq!(decisions, []);
        assert_eq!(governor.rates(), Rates::default());
    }

    #[test]
    fn a_throttle_with_nothing_accepted_lately_teaches_nothing() {
        let now = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        let refused = CallAnswer {
            sent_at: now,
            sent: CALL,
            accepted: CallSize { bytes: 0, records: 0 },
            refused_for_throughput: CALL.records,
            throttled_whole: true,
            refused_at_the_end: 0,
        };
        assert_eq!(governor.answered(refused, now + Duration::from_secs(2)), None);
        assert_eq!(governor.rates(), Rates::default());
        assert!(!governor.refusals_are_rare(now + Duration::from_secs(2)));
        assert_eq!(governor.reserve(CALL, now), Duration::ZERO, "unlimited until something is learned");
    }

    #[test]
    fn one_call_carries_at_most_a_tenth_of_a_second_of_the_learned_rate() {
        let start = Instant::now();
        let mut governor = RateGovernor::new(Rates::default());
        assert_eq!(governor.call_allowance(), CallSize { bytes: u64::MAX, records: u64::MAX }, "unlimited until something is learned");
        // Ten calls a second for two seconds, and a call sent at the start refused whole at the end.
        for call in 0..20 {
            let at = start + Duration::from_millis(50 + 95 * call);
            governor.answered(answer(at, 0), at);
        }
        let refused = CallAnswer {
            accepted: CallSize { bytes: 0, records: 0 },
            refused_for_throughput: 500,
            throttled_whole: true,
            refused_at_the_end: 0,
            ..answer(start, 0)
        };
        let change = governor.answered(refused, start + Duration::from_secs(2));
        assert_eq!(change.map(|change| change.decision), Some(PaceDecision::Testing));
        let allowance = governor.call_allowance();
        assert_eq!(allowance.bytes, (CALL.bytes as f64 * 10.0 * 0.95 * 0.1) as u64);
        assert_eq!(allowance.records, (CALL.records as f64 * 10.0 * 0.95 * 0.1) as u64);
        let ceiling = RateGovernor::new(Rates { bytes: Some(1_000_000.0), records: None, calls: None });
        assert_eq!(ceiling.call_allowance(), CallSize { bytes: 100_000, records: u64::MAX }, "a configured ceiling paces from the start");
    }

    /// A governor that saw calls 0 to 199 sent 10 ms apart from `start`, each answered at once
    /// with nothing refused: two seconds of clean traffic.
    fn after_two_clean_seconds(start: Instant) -> RateGovernor {
        let mut governor = RateGovernor::new(Rates::default());
        for call in 0..200 {
            governor.answered(answer(sent(start, call), 0), sent(start, call));
        }
        governor
    }

    /// When call `call` of a run sent 10 ms apart from `start` left.
    fn sent(start: Instant, call: u64) -> Instant {
        start + Duration::from_millis(10 * call)
    }

    /// Calls 0 to 199 answered over two seconds, then call 203 refused whole while calls 200 to
    /// 202 are still in flight: the governor, when the refusal came, and the rates it set.
    fn refused_while_three_calls_travel(start: Instant) -> (RateGovernor, Instant, Rates) {
        let mut governor = RateGovernor::new(Rates::default());
        for call in 0..200 {
            governor.answered(answer(sent(start, call), 0), sent(start, call) + Duration::from_millis(5));
        }
        let refused_at = sent(start, 203) + Duration::from_millis(1);
        let refused = CallAnswer {
            accepted: CallSize { bytes: 0, records: 0 },
            refused_for_throughput: 500,
            throttled_whole: true,
            refused_at_the_end: 0,
            ..answer(sent(start, 203), 0)
        };
        let lowered = governor.answered(refused, refused_at).expect("lowered").rates;
        (governor, refused_at, lowered)
    }

    #[test]
    fn calls_sent_before_the_refused_one_and_answered_after_it_still_count_in_what_it_learns() {
        let start = Instant::now();
        let (mut governor, refused_at, lowered) = refused_while_three_calls_travel(start);
        // Measured over the two seconds before the refusal, from which calls 0 to 2 fell out:
        // 197 calls, 98.5 a second.
        let measured = |calls_per_second: f64| Some(CALL.bytes as f64 * calls_per_second * 0.95);
        assert_eq!(lowered.bytes, measured(98.5));
        for call in 200..203 {
            governor.answered(answer(sent(start, call), 0), refused_at + Duration::from_millis(call - 199));
        }
        let learned = governor.rates();
        assert_eq!(learned.bytes, measured(100.0), "{learned:?}");
        assert_eq!(learned.calls, Some(100.0 * 0.95), "{learned:?}");
        // Calls sent after the refused one are the next second's traffic.
        governor.answered(answer(refused_at + Duration::from_millis(20), 0), refused_at + Duration::from_millis(25));
        assert_eq!(governor.rates(), learned);
    }

    #[test]
    fn an_overtaken_answer_more_than_a_second_after_the_refusal_does_not_count() {
        let start = Instant::now();
        let (mut governor, refused_at, lowered) = refused_while_three_calls_travel(start);
        // Call 200 was held up on a slow path for seconds: it may have been accepted in any
        // later second, so it says nothing about the second the refusal measured.
        governor.answered(answer(sent(start, 200), 0), refused_at + Duration::from_millis(2_500));
        assert_eq!(governor.rates(), lowered);
        governor.answered(answer(sent(start, 201), 0), refused_at + Duration::from_millis(2_600));
        assert_eq!(governor.rates(), lowered);
    }

    #[test]
    fn a_call_mostly_refused_entry_by_entry_makes_a_test_of_one_second() {
        let start = Instant::now();
        let mut governor = after_two_clean_seconds(start);
        // A quota ran out in this call: 400 of its 500 entries refused, one by one. One lumpy
        // call among a hundred makes the share's spread as large as the share, as one call
        // throttled whole would (see the test below, where that waits for five seconds).
        let tested_at = sent(start, 200);
        assert_eq!(governor.answered(answer(tested_at, 400), tested_at).map(|change| change.decision), Some(PaceDecision::Testing));
        let (decisions, _) = answer_calls(&mut governor, tested_at, TEST_SPAN + Duration::from_millis(100), Duration::from_millis(1), 0);
        assert_eq!(decisions, [PaceDecision::QuotaConfirmed], "nothing refused below the pace: a quota, known after one second");
        assert_eq!(governor.noise_floor(), Some(0.0));
    }

    #[test]
    fn calls_waiting_for_the_pace_when_it_falls_go_at_the_lower_pace() {
        let start = Instant::now();
        let mut governor = after_two_clean_seconds(start);
        let refused_at = sent(start, 200);
        assert_eq!(governor.answered(answer(refused_at, 500), refused_at).map(|change| change.decision), Some(PaceDecision::Lowered));
        let (_, now) = answer_calls(&mut governor, refused_at, Duration::from_millis(2_500), Duration::from_millis(1), 0);
        // Sixteen calls come at once, as the batches of a route do, just after one went: all wait.
        let mut waiting = Vec::new();
        for _ in 0..16 {
            if let Err(wait) = governor.try_reserve(CALL, now) {
                waiting.push(now + wait);
            }
        }
        assert_eq!(waiting.len(), 16);
        // Before any of them goes, a refusal lowers the pace (a test, 10 % below it).
        let change = governor.answered(answer(now, 400), now + Duration::from_millis(1)).expect("a decision");
        assert_eq!(change.decision, PaceDecision::Testing);
        let lowered = change.rates.bytes.expect("a byte rate");
        let mut gone = Vec::new();
        for wake in waiting {
            let mut at = wake.max(gone.last().copied().unwrap_or(wake));
            while let Err(wait) = governor.try_reserve(CALL, at) {
                at += wait;
            }
            gone.push(at);
        }
        let span = gone[15].duration_since(gone[0]).as_secs_f64();
        let at_the_lower_pace = 15.0 * CALL.bytes as f64 / lowered;
        assert!(span >= at_the_lower_pace * 0.999, "16 calls went over {span:.4} s; the lowered pace takes {at_the_lower_pace:.4} s");
    }

    #[test]
    fn after_a_hold_the_rate_grows_by_steps_that_double_each_second_the_pace_limits() {
        let start = Instant::now();
        let mut governor = after_two_clean_seconds(start);
        let tested_at = sent(start, 200);
        let refused = CallAnswer {
            accepted: CallSize { bytes: 0, records: 0 },
            refused_for_throughput: 500,
            throttled_whole: true,
            refused_at_the_end: 0,
            ..answer(tested_at, 0)
        };
        assert_eq!(governor.answered(refused, tested_at).map(|change| change.decision), Some(PaceDecision::Testing));
        let lowered = governor.rates().bytes.expect("a rate");
        // At the lower pace nothing is refused: a quota. One call refused in a hundred is weak
        // evidence, so the test runs its whole length before the point estimates decide.
        let (decisions, mut now) =
            answer_calls(&mut governor, tested_at, TEST_LONGEST - Duration::from_millis(100), Duration::from_millis(1), 0);
        assert_eq!(decisions, []);
        let (decisions, _) = answer_calls(&mut governor, now, Duration::from_millis(200), Duration::from_millis(1), 0);
        assert_eq!(decisions, [PaceDecision::QuotaConfirmed]);
        assert_eq!(governor.rates().bytes, Some(lowered), "held");
        // Calls offered faster than the pace: it holds them back every second.
        now = tested_at + TEST_LONGEST;
        while now < tested_at + TEST_LONGEST + Duration::from_millis(4_500) {
            now += governor.reserve(CALL, now).max(Duration::from_millis(1));
        }
        let grown = governor.rates().bytes.expect("a rate");
        // Four whole seconds of probing after the verdict (the hold had passed): 1 + 2 + 4 + 8 % of the learned rate.
        assert!((grown / lowered - 1.15).abs() < 0.001, "{grown} from {lowered}");
    }

    /// ap-northeast-2's default Direct PUT quota.
    const DEFAULT: Rates = Rates { bytes: Some(MIB as f64), records: Some(100_000.0), calls: Some(1_000.0) };

    /// A governor expecting [`DEFAULT`] that has booked, 100 µs apart from `start`, the 14
    /// calls of [`CALL`] that fit in it (1,022,000 bytes) and the 15th, past it (the scout,
    /// 318 of its 500 records past 1 MiB); returns it and when the scout was booked.
    fn scout_booked(start: Instant) -> (RateGovernor, Instant) {
        let mut governor = RateGovernor::new(Rates::default()).expecting(DEFAULT);
        let mut at = start;
        for call in 0..14 {
            assert_eq!(governor.try_reserve(CALL, at), Ok(()), "call {call}, within the default");
            assert!(!governor.is_scouting(start));
            at += Duration::from_micros(100);
        }
        assert_eq!(governor.try_reserve(CALL, at), Ok(()), "the scout goes at once");
        assert!(governor.is_scouting(start));
        (governor, at)
    }

    /// Answers the 14 calls [`scout_booked`] booked before the scout, accepted whole.
    fn answer_the_calls_before_the_scout(governor: &mut RateGovernor, start: Instant, now: Instant) {
        for call in 0..14 {
            assert_eq!(governor.answered(answer(start + Duration::from_micros(100 * call), 0), now), None);
        }
    }

    #[test]
    fn the_call_past_the_default_quota_goes_alone_and_refused_at_its_end_lowers_the_rate_at_once() {
        let start = Instant::now();
        let (mut governor, scout_at) = scout_booked(start);
        // The calls after it wait for its answer: at an unpaced start with 8 in flight, they
        // would all go into a spent second.
        let wait = governor.try_reserve(CALL, scout_at + Duration::from_millis(1)).expect_err("waits for the scout");
        assert!(wait <= SCOUT_WAITED_FOR_AT_MOST, "{wait:?}");
        let now = scout_at + Duration::from_millis(3);
        answer_the_calls_before_the_scout(&mut governor, start, now);
        // The stream took 1 MiB and refused what came after: the scout's last 318 entries.
        let refused = CallAnswer { refused_at_the_end: 318, ..answer(scout_at, 318) };
        let change = governor.answered(refused, now).expect("a decision");
        assert_eq!(change.decision, PaceDecision::Lowered);
        assert!(!governor.is_scouting(start));
        assert!(governor.is_pacing());
        let accepted = 14.0 * 73_000.0 + 182.0 * 146.0;
        let bytes = governor.rates().bytes.expect("a byte rate");
        assert!((bytes - 0.95 * accepted).abs() < 1_000.0, "{bytes}");
        // The next call waits for the second the quota spent, paid at the new rate.
        let wait = governor.try_reserve(CALL, now).expect_err("paced");
        assert!(wait > Duration::from_millis(900), "{wait:?}");
    }

    #[test]
    fn a_scout_answered_any_other_way_ends_scouting_and_sending_goes_on_unpaced() {
        let start = Instant::now();
        // Accepted whole: the quota is larger than the default (raised, in proportion).
        let accepted = |sent_at| answer(sent_at, 0);
        // 10 % of records refused at random, scattered: noise, the rest taken past the default.
        let scattered = |sent_at| CallAnswer { refused_at_the_end: 1, ..answer(sent_at, 50) };
        // Throttled whole: how noise refuses calls too.
        let throttled = |sent_at| CallAnswer { throttled_whole: true, accepted: CallSize::default(), ..answer(sent_at, CALL.records) };
        // Refused at its end, but only 100 of the 318 past the default: something else
        // refused them (another writer's share, a window of the stream not ours).
        let too_short = |sent_at| CallAnswer { refused_at_the_end: 100, ..answer(sent_at, 100) };
        let answers: [(&str, &dyn Fn(Instant) -> CallAnswer); 4] =
            [("accepted", &accepted), ("scattered", &scattered), ("throttled whole", &throttled), ("too short", &too_short)];
        for (name, scout_answer) in answers {
            let (mut governor, scout_at) = scout_booked(start);
            let now = scout_at + Duration::from_millis(3);
            answer_the_calls_before_the_scout(&mut governor, start, now);
            let decision = governor.answered(scout_answer(scout_at), now).map(|change| change.decision);
            assert_ne!(decision, Some(PaceDecision::Lowered), "{name}");
            assert!(!governor.is_scouting(start), "{name}");
            // Every call goes at once again, past the default too: no second scout.
            for call in 0..20 {
                assert_eq!(governor.try_reserve(CALL, now + Duration::from_micros(call)), Ok(()), "{name}: call {call}");
                assert!(!governor.is_scouting(start), "{name}: call {call}");
            }
        }
        // No answer the governor can read (a 5xx, a network error), or none within a second.
        let (mut governor, scout_at) = scout_booked(start);
        answer_the_calls_before_the_scout(&mut governor, start, scout_at + Duration::from_millis(2));
        governor.unanswered(scout_at);
        assert!(!governor.is_scouting(start));
        assert_eq!(governor.try_reserve(CALL, scout_at + Duration::from_millis(3)), Ok(()));
        let (mut governor, scout_at) = scout_booked(start);
        assert!(governor.try_reserve(CALL, scout_at + Duration::from_millis(999)).is_err());
        assert_eq!(governor.try_reserve(CALL, scout_at + SCOUT_WAITED_FOR_AT_MOST), Ok(()));
        assert!(!governor.is_scouting(start));
    }

    #[test]
    fn a_call_sent_before_the_scout_and_taken_after_it_is_waited_for_and_its_refused_end_is_the_quota() {
        // Answers overtake each other: the stream took the scout whole, then the call booked
        // just before it, and ran out in that one.
        let start = Instant::now();
        let (mut governor, scout_at) = scout_booked(start);
        let now = scout_at + Duration::from_millis(3);
        for call in 0..13 {
            assert_eq!(governor.answered(answer(start + Duration::from_micros(100 * call), 0), now), None);
        }
        assert_eq!(governor.answered(answer(scout_at, 0), now), None);
        assert!(governor.is_scouting(start), "the 14th call is still out");
        assert!(governor.try_reserve(CALL, now).is_err(), "nothing more goes past the default meanwhile");
        let overtaken = CallAnswer { refused_at_the_end: 318, ..answer(start + Duration::from_micros(1_300), 318) };
        let change = governor.answered(overtaken, now).expect("a decision");
        assert_eq!(change.decision, PaceDecision::Lowered);
        assert!(!governor.is_scouting(start));
        // Answered without a refused end, it would have settled the default: sending goes on.
        let (mut governor, scout_at) = scout_booked(start);
        assert_eq!(governor.answered(answer(scout_at, 0), now), None);
        answer_the_calls_before_the_scout(&mut governor, start, now);
        assert!(!governor.is_scouting(start));
        assert_eq!(governor.try_reserve(CALL, now), Ok(()));
    }

    #[test]
    fn a_call_is_past_the_default_by_the_share_of_it_beyond_any_of_its_limits() {
        let call = CallSize { bytes: 100_000, records: 500 };
        let before = CallSize { bytes: 1_000_000, records: 1_000 };
        // 1,100,000 − 1,048,576 = 51,424 bytes of 100,000 past: 258 of 500 records.
        assert_eq!(records_past(DEFAULT, before, 10, call), 258);
        assert_eq!(records_past(DEFAULT, CallSize { bytes: 900_000, records: 1_000 }, 10, call), 0, "within");
        // The records' limit: 99,800 before, 300 of this call's 500 past 100,000.
        assert_eq!(records_past(DEFAULT, CallSize { bytes: 10_000, records: 99_800 }, 200, call), 300);
        // The calls' limit: the 1,001st call is past it whole.
        assert_eq!(records_past(DEFAULT, CallSize { bytes: 10_000, records: 1_000 }, 1_000, call), 500);
        // One packed call larger than the default: the share of it past.
        let packed = CallSize { bytes: 4 * MIB, records: 8 };
        assert_eq!(records_past(DEFAULT, CallSize::default(), 0, packed), 6);
    }
}
