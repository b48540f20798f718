//! Delivering one batch: calls to the sink until every record is accepted or dead-lettered, with
//! back-off, pacing by the learned rate ([`crate::sink::rate`]) and the shutdown deadline.
//!
//! Several batches of a route may be in delivery at once (`max_in_flight`); the flusher
//! acknowledges them in queue order whatever order they finish in. A courier never touches the
//! queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::flusher::PendingBatch;
use super::resender::{answer_each, riders_len, riders_records, CallOut, CallsOut, Leftovers, Resend, ResendReply};
use crate::config::SinkSettings;
use crate::events::{CallFailure, EntryRefusals, Events, RetryCause};
use crate::queue::{DeadLetter, DeadLetterReason, FileIdentity};
use crate::sink::rate::{CallAnswer, CallSize, RateGovernor};
use crate::sink::{aggregation, BatchLimits, BatchPacker, Offer, OutgoingRecords, PackFormat, RecordOutcome, Sink, SinkError};

/// How delivering a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    Accepted,
    /// Shutdown's deadline passed first: nothing is acknowledged; the batch is sent again after restart.
    Abandoned,
}

/// What a batch's records refused as invalid became: dead letters, not delivered; and the
/// records of a stream a template named that does not exist, for the fallback stream.
#[derive(Debug, Default)]
pub(super) struct Rejections {
    /// Indices into the batch's records.
    pub(super) records: Vec<usize>,
    pub(super) dead_letters: Vec<DeadLetter>,
    /// Indices of the records left when the stream answered that it does not exist.
    pub(super) to_fallback: Vec<usize>,
}

/// What every delivery of a route to one stream shares: the sink, its settings and the
/// stream's learned pace. A route whose stream is named per record has one for each stream.
pub(super) struct Courier {
    pub(super) route: String,
    /// The stream this courier's calls go to.
    pub(super) stream: Arc<str>,
    /// Whether the route sends to streams named per record: then what happens to each stream
    /// is counted under its name too.
    pub(super) per_stream: bool,
    /// Whether a record's field named this stream and a fallback stream stands behind it: if
    /// the stream does not exist, its records go to the fallback instead of waiting for it
    /// (one stray value must not stop a route).
    pub(super) falls_back: bool,
    pub(super) sink: Arc<Sink>,
    pub(super) settings: SinkSettings,
    /// The sink's limits of one call, as the flusher's batches were packed to.
    pub(super) limits: BatchLimits,
    pub(super) events: Arc<Events>,
    /// After this fires, a delivery has `shutdown_timeout` to finish.
    pub(super) stop: CancellationToken,
    pub(super) shutdown_timeout: Duration,
    /// The pace of calls, learned from throttling (see [`crate::sink::rate`]).
    pub(super) governor: Mutex<RateGovernor>,
    /// Calls wait for the pace in turn, the first come first (a fair lock): batches are
    /// acknowledged in order, and a call that lost every race for the next slot to later ones
    /// would hold back all of their acknowledgements.
    pub(super) pace_turns: tokio::sync::Mutex<()>,
    /// Wakes the call waiting for its turn when the pace changes: a test undone (the rate
    /// restored) lets it go at once instead of at the end of a wait the lower rate had set.
    pub(super) pace_changed: tokio::sync::Notify,
    /// Where leftovers of partly accepted calls wait to be sent together, by the resender or
    /// riding in new batches' calls (see [`super::resender`]).
    pub(super) leftovers: Leftovers,
    /// Batches' calls whose leftovers the resender may wait for.
    pub(super) calls_out: Arc<CallsOut>,
    /// The stream's own places among those calling (`max_in_flight` of them), when the route
    /// sends to streams named per record: a batch's records wait for a place of their stream,
    /// not the batch for one of the route, so a stream that refuses holds back only its own
    /// records and the batches after them go on for the other streams. `None`: the batch's
    /// place is the route's (one stream).
    pub(super) calling_places: Option<Arc<Semaphore>>,
}

impl Courier {
    /// Sends the batch until every record is accepted or dead-lettered, or shutdown's deadline passes.
    ///
    /// When to send again: a call that had anything accepted shows the destination is up, so
    /// its refused records go again at once (the governor's pace still spaces them), with the
    /// leftovers of the other batches in flight: refusals that are noise cost only their own
    /// resend, never a pause. A call that failed whole, or had everything refused, goes again at
    /// once too for up to three failures in a row while the destination accepted something in
    /// the last second (a fault of one call); else it waits out the exponential back-off, as
    /// for an outage.
    ///
    /// `calling` is the batch's place among the `max_in_flight` calling: given up once only
    /// leftovers are left, which go with other batches' (see [`super::resender`]), so that new
    /// batches are sent meanwhile.
    ///
    /// `records` are the indices of the batch's records that go to this courier's stream; the
    /// place among those calling is shared by every stream of the batch, and given up once all
    /// of them let it go (`None`: the batch gave it up already, or the stream has places of its
    /// own, taken here before the first call). Records refused as invalid
    /// come back as dead letters; those of a stream that does not exist, when a fallback
    /// stands behind it, come back to be sent there.
    pub(super) async fn deliver(
        &self,
        batch: &PendingBatch,
        records: Vec<usize>,
        calling: Option<Arc<OwnedSemaphorePermit>>,
    ) -> (Delivery, Rejections) {
        let mut rejections = Rejections::default();
        let delivery = self.deliver_records(batch, records, calling, &mut rejections).await;
        (delivery, rejections)
    }

    async fn deliver_records(
        &self,
        batch: &PendingBatch,
        records: Vec<usize>,
        calling: Option<Arc<OwnedSemaphorePermit>>,
        rejections: &mut Rejections,
    ) -> Delivery {
        let mut calling = calling;
        let route = self.route.as_str();
        let abandon = abandon_after(self.stop.clone(), self.shutdown_timeout);
        tokio::pin!(abandon);
        if let Some(places) = &self.calling_places {
            // Taken first come first (the semaphore is fair), which is mostly queue order: a
            // later batch sealed sooner (compression runs on a blocking thread) may come first.
            // That costs latency only; acknowledgement waits for the earlier batch either way.
            let place = tokio::select! {
                place = places.clone().acquire_owned() => place,
                _ = &mut abandon => return Delivery::Abandoned,
            };
            // Never closed; were it, the records would go without a place rather than never.
            calling = place.ok().map(Arc::new);
        }
        let mut groups: VecDeque<Vec<usize>> = VecDeque::from([records]);
        let mut backoff = self.backoff();
        let mut attempt = 0u64;
        let mut failures_in_a_row = 0u32;
        let mut together = false;
        // The next call carries no riders (see `call_with_riders`).
        let mut alone = false;
        // The end of the group that riders left no room for in the call: sent with the group's
        // leftovers, as a leftover itself.
        let mut displaced: Vec<usize> = Vec::new();
        // This batch's call, counted as out until its leftovers are with the resender.
        let mut out: Option<CallOut> = None;
        while let Some(mut group) = groups.pop_front() {
            loop {
                attempt += 1;
                // While the call past the default quota is out, the others wait for its answer
                // before they are cut to the pace it may teach: cut to an unpaced start's
                // allowance, a packed batch's 2 MiB call would go whole at 1 MiB/s.
                tokio::select! {
                    _ = self.scout_answered() => {}
                    _ = &mut abandon => return Delivery::Abandoned,
                }
                // A batch packed before the pace was learned, or the refused part of a call,
                // may carry more than a call should at that pace: the rest goes in later calls.
                let allowance = self.call_allowance();
                if let Some(rest) = split_past_allowance(&batch.records, &mut group, self.limits, allowance) {
                    groups.push_front(rest);
                }
                // Refused records left over from a call that was partly accepted go with those of
                // the other batches in flight, in one call (see [`super::resender`]).
                let answer = if std::mem::take(&mut together) {
                    let reply = tokio::select! {
                        reply = self.resend_together(&batch.records, &group, out.take()) => reply,
                        _ = &mut abandon => return Delivery::Abandoned,
                    };
                    match reply {
                        ResendReply::Answered(answer) => answer,
                        ResendReply::SendAlone => continue,
                    }
                } else {
                    out = Some(self.calls_out.enter());
                    let riders =
                        if std::mem::take(&mut alone) { Vec::new() } else { self.take_riders(&batch.records, &mut group, &mut displaced) };
                    let answer = tokio::select! {
                        answer = self.call_with_riders(&batch.records, &group, riders) => answer,
                        _ = &mut abandon => return Delivery::Abandoned,
                    };
                    match answer {
                        Some(answer) => answer,
                        None => {
                            // Refused as invalid with riders: the invalid record may be a
                            // rider's; the batch's own records go again without them.
                            group.append(&mut displaced);
                            alone = true;
                            continue;
                        }
                    }
                };
                if answer.is_err() {
                    // Nothing of a call that failed whole goes to the resender: the records
                    // the riders displaced go again with the rest.
                    out = None;
                    group.append(&mut displaced);
                }
                let cause = match answer {
                    Ok(outcomes) => {
                        let read = read_outcomes(&batch.records, &group, &outcomes);
                        let (failed, refusals, accepted) = (read.failed, read.refusals, read.accepted);
                        let Some((code, message)) = read.first_failure else {
                            backoff = self.backoff();
                            failures_in_a_row = 0;
                            if displaced.is_empty() {
                                out = None;
                                break;
                            }
                            // What the riders displaced rides in turn (queue order: it follows
                            // every record of the call).
                            group = std::mem::take(&mut displaced);
                            together = true;
                            drop(calling.take());
                            continue;
                        };
                        self.events.entries_failed(route, refusals, group.len() as u64, (&code, &message));
                        group = failed;
                        group.append(&mut displaced);
                        if accepted.records > 0 {
                            // Part of the call went through: the destination is up.
                            backoff = self.backoff();
                            failures_in_a_row = 0;
                            self.events.retry_scheduled(route, RetryCause::FailedEntries, attempt, Duration::ZERO);
                            together = true;
                            drop(calling.take());
                            continue;
                        }
                        RetryCause::FailedEntries
                    }
                    // Counted where the call was made (`Courier::call`): once per call, however
                    // many batches rode in it.
                    Err(SinkError::Throttled { .. }) => RetryCause::Throttled,
                    Err(SinkError::ServerError { .. }) => RetryCause::ServerError,
                    Err(SinkError::Transient { .. }) => RetryCause::Transient,
                    Err(SinkError::Unavailable { code, .. }) if self.falls_back && code == "ResourceNotFoundException" => {
                        // A stream named by a record's value that does not exist: every record
                        // left of this stream goes to the fallback, which the flusher sends.
                        rejections.to_fallback.extend(group.drain(..).chain(displaced.drain(..)).chain(groups.drain(..).flatten()));
                        rejections.to_fallback.sort_unstable();
                        return Delivery::Accepted;
                    }
                    Err(SinkError::Unavailable { message, fix, .. }) => {
                        self.events.sink_unavailable(route, &message, &fix);
                        let delay = self.settings.retry_max_backoff;
                        self.events.retry_scheduled(route, RetryCause::Unavailable, attempt, delay);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = &mut abandon => return Delivery::Abandoned,
                        }
                        continue;
                    }
                    Err(SinkError::InvalidRecords { code, message }) => {
                        if let [index] = group[..] {
                            let origin = batch.origin_of(index);
                            let detail = format!("a record of chunk {}: {code}: {message}", origin.seq);
                            let data = record_as_read(&self.settings, batch.records.get(index));
                            rejections.records.push(index);
                            let letter = record_dead_letter(
                                origin.file,
                                origin.path,
                                origin.start_offset,
                                DeadLetterReason::RejectedBySink,
                                detail,
                                data,
                            );
                            rejections.dead_letters.push(letter);
                        } else {
                            // Halve the group until the record the destination refuses is alone.
                            let second = group.split_off(group.len() / 2);
                            groups.push_front(second);
                            groups.push_front(group);
                        }
                        break;
                    }
                };
                out = None;
                failures_in_a_row += 1;
                // Batches are acknowledged in order: one batch waiting out a back-off holds every
                // later one, so a fault of a call while the stream takes others is resent at once
                // (a few times in a row, as random refusals allow; more is not a fault of one call).
                let a_fault_of_one_call =
                    failures_in_a_row <= FAULTS_RESENT_AT_ONCE && self.lock_governor().refusals_are_rare(Instant::now());
                let delay = if a_fault_of_one_call { Duration::ZERO } else { backoff.next().unwrap_or(self.settings.retry_max_backoff) };
                self.events.retry_scheduled(route, cause, attempt, delay);
                if !delay.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = &mut abandon => return Delivery::Abandoned,
                    }
                }
            }
        }
        Delivery::Accepted
    }

    /// One call at the pace: waits for the governor, sends, counts the call and tells the
    /// governor what the answer took and refused.
    pub(super) async fn call(&self, records: &OutgoingRecords, group: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        let size = call_size(records, group);
        // Unpaced (or with a slot free), a call goes at once, with no turn to take. It is sent
        // at the instant it was booked for: the governor knows its answer by it (the scout's).
        let mut sent_at = Instant::now();
        let at_once = self.lock_governor().try_reserve(size, sent_at);
        if at_once.is_err() {
            let _turn = self.pace_turns.lock().await;
            // Asked again after each wait: a pace lowered meanwhile holds this call back too.
            sent_at = self.until_the_governor_allows(|governor, now| governor.try_reserve(size, now).map(|()| now)).await;
        }
        let answer = self.sink.put_to(&self.stream, records, group).await;
        self.events.call_answered(group.len() as u64, sent_at.elapsed());
        if self.per_stream {
            self.events.stream_call_answered(&self.settings.name, &self.stream, &answer);
        }
        // A failed call is counted here, once: the batches whose records rode in it each hear
        // of it and retry, but it was one call.
        match &answer {
            Err(SinkError::Throttled { message }) => self.events.call_throttled(&self.route, message),
            Err(SinkError::ServerError { message, .. }) => self.events.call_failed(&self.route, CallFailure::ServerError, message),
            Err(SinkError::Transient { message }) => self.events.call_failed(&self.route, CallFailure::Network, message),
            _ => {}
        }
        let told = match &answer {
            Ok(outcomes) => {
                let read = read_outcomes(records, group, outcomes);
                Some(CallAnswer {
                    sent_at,
                    sent: size,
                    accepted: read.accepted,
                    refused_for_throughput: read.refusals.throughput,
                    throttled_whole: false,
                    refused_at_the_end: read.refused_at_the_end,
                })
            }
            Err(SinkError::Throttled { .. }) => Some(CallAnswer {
                sent_at,
                sent: size,
                accepted: CallSize::default(),
                refused_for_throughput: size.records,
                throttled_whole: true,
                refused_at_the_end: 0,
            }),
            Err(_) => None,
        };
        match told {
            Some(told) => self.tell_governor(told),
            None => self.governor_unanswered(sent_at),
        }
        answer
    }

    /// Leftovers of other batches to ride in this batch's call of `group`, the front of the
    /// waiting ones within half a call; what of `group` no longer fits is cut off into
    /// `displaced`, to follow as a leftover: so every call is full, and a call's worth of
    /// leftovers never costs a call of its own.
    fn take_riders(&self, records: &OutgoingRecords, group: &mut Vec<usize>, displaced: &mut Vec<usize>) -> Vec<Resend> {
        let allowance = self.call_allowance();
        let riders = self.leftovers.take_riders(self.limits, allowance);
        if riders.is_empty() {
            return riders;
        }
        let mut packer = BatchPacker::filled_to(self.limits, allowance);
        for resend in &riders {
            for index in 0..resend.records.len() {
                packer.offer(resend.records.get(index).len() as u64);
            }
        }
        let keep = group.iter().take_while(|&&index| packer.offer(records.get(index).len() as u64) == Offer::Added).count();
        if keep == 0 {
            // Not even the batch's first record fits after them (a large one): it goes alone.
            self.leftovers.put_back(riders);
            return Vec::new();
        }
        if keep < group.len() {
            *displaced = group.split_off(keep);
        }
        riders
    }

    /// One call of the records `group` of `records`, after the leftovers `riders`, which are
    /// given their part of the answer. Returns the answer for `group`'s records, or `None`
    /// when a call with riders was refused as invalid: whose record it was is not known.
    async fn call_with_riders(
        &self,
        records: &OutgoingRecords,
        group: &[usize],
        riders: Vec<Resend>,
    ) -> Option<Result<Vec<RecordOutcome>, SinkError>> {
        if riders.is_empty() {
            return Some(self.call(records, group).await);
        }
        let mut together = riders_records(&riders, call_size(records, group).bytes as usize);
        for &index in group {
            together.push(records.get(index), false);
        }
        let all: Vec<usize> = (0..together.len()).collect();
        let answer = self.call(&together, &all).await;
        let theirs = riders_len(&riders);
        answer_each(riders, &answer, true);
        match answer {
            Ok(mut outcomes) => Some(Ok(outcomes.split_off(theirs))),
            Err(SinkError::InvalidRecords { .. }) => None,
            Err(error) => Some(Err(error)),
        }
    }

    /// Hands the records `group` of `records` to the resender, to go with other batches'
    /// leftovers; should the reply be dropped unanswered, the caller sends them alone.
    /// `out` is the call that left them, counted as out until they are handed over.
    async fn resend_together(&self, records: &OutgoingRecords, group: &[usize], out: Option<CallOut>) -> ResendReply {
        let mut leftovers = OutgoingRecords::with_capacity(call_size(records, group).bytes as usize);
        for &index in group {
            leftovers.push(records.get(index), false);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.leftovers.submit(Resend { records: leftovers, reply });
        drop(out);
        // A reply dropped unanswered (a call's task aborted): the batch sends them itself.
        answer.await.unwrap_or(ResendReply::SendAlone)
    }

    /// Returns once no call past the default quota is out (see [`RateGovernor::expecting`]):
    /// its answer wakes the waiting calls, and the governor stops waiting for it after a second.
    async fn scout_answered(&self) {
        self.until_the_governor_allows(|governor, now| governor.scout_awaited(now).map_or(Ok(()), Err)).await;
    }

    /// Asks the governor (`ask`, with the instant asked at) until it allows; after each "wait
    /// this long", sleeps that long or until the pace changes or the scout is answered.
    async fn until_the_governor_allows<T>(&self, mut ask: impl FnMut(&mut RateGovernor, Instant) -> Result<T, Duration>) -> T {
        loop {
            let changed = self.pace_changed.notified();
            tokio::pin!(changed);
            // Registered before asking: a change between the answer and the sleep still wakes it.
            changed.as_mut().enable();
            let answer = ask(&mut self.lock_governor(), Instant::now());
            match answer {
                Ok(allowed) => return allowed,
                Err(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut changed => {}
                    }
                }
            }
        }
    }

    /// Whether a learned rate is in force (see [`RateGovernor::is_pacing`]).
    pub(super) fn is_pacing(&self) -> bool {
        self.lock_governor().is_pacing()
    }

    /// The most one call should carry at the learned pace (see [`RateGovernor::call_allowance`]).
    pub(super) fn call_allowance(&self) -> CallSize {
        self.lock_governor().call_allowance()
    }

    fn lock_governor(&self) -> MutexGuard<'_, RateGovernor> {
        // The governor holds plain numbers; after a panic elsewhere they are still usable.
        self.governor.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells the governor that the call sent at `sent_at` got no answer it can read; wakes the
    /// calls that waited for it, if it was the scout.
    fn governor_unanswered(&self, sent_at: Instant) {
        let mut governor = self.lock_governor();
        let scouting = governor.is_scouting(Instant::now());
        governor.unanswered(sent_at);
        if scouting && !governor.is_scouting(Instant::now()) {
            drop(governor);
            self.pace_changed.notify_waiters();
        }
    }

    /// Tells the governor what a call's answer took and refused; logs and counts any change of
    /// pace, and wakes the calls waiting for the pace or for the scout's answer.
    fn tell_governor(&self, answer: CallAnswer) {
        let mut governor = self.lock_governor();
        let scouting = governor.is_scouting(Instant::now());
        let change = governor.answered(answer, Instant::now());
        let scout_answered = scouting && !governor.is_scouting(Instant::now());
        let Some(change) = change else {
            drop(governor);
            if scout_answered {
                self.pace_changed.notify_waiters();
            }
            return;
        };
        let allowance = governor.call_allowance();
        let pacing = governor.is_pacing();
        drop(governor);
        self.pace_changed.notify_waiters();
        self.events.pace_changed(&self.route, &change, allowance);
        if self.per_stream {
            self.events.stream_pace_changed(&self.settings.name, &self.stream, pacing.then_some(allowance));
        }
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.settings.retry_initial_backoff)
            .with_max_delay(self.settings.retry_max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// A record as it was read: without the newline added for sending. Dead letters keep this, so
/// that a replay sends exactly what a first delivery would. An aggregated record is its user
/// records' lines, one per line, as a packed record's are.
fn record_as_read(settings: &SinkSettings, sent: &[u8]) -> Vec<u8> {
    // Kept as sent when it cannot be read back: the flusher compressed it, so that never happens.
    let decompressed = settings.compression.and_then(|compression| compression.decompress(sent).ok());
    let sent = decompressed.as_deref().unwrap_or(sent);
    let lines = match settings.packing.map(|packing| packing.format) {
        // The flusher framed it: a record it cannot read back is kept as it was sent.
        Some(PackFormat::Aggregated) => aggregation::deaggregate(sent).map(|(_, records)| records).unwrap_or_else(|_| vec![sent.to_vec()]),
        _ => vec![sent.to_vec()],
    };
    let mut data = Vec::with_capacity(sent.len());
    for (index, line) in lines.iter().enumerate() {
        if index > 0 {
            data.push(b'\n');
        }
        let line = if settings.append_newline { line.strip_suffix(b"\n").unwrap_or(line) } else { &line[..] };
        data.extend_from_slice(line);
    }
    data
}

/// Bytes and records of the records `which` of `records`.
fn call_size(records: &OutgoingRecords, which: &[usize]) -> CallSize {
    CallSize { bytes: which.iter().map(|&index| records.get(index).len() as u64).sum(), records: which.len() as u64 }
}

/// Cuts `group` after its longest prefix that a batch filled to `allowance` takes (one record
/// at least, as the flusher's batches) and returns the rest, if any.
fn split_past_allowance(records: &OutgoingRecords, group: &mut Vec<usize>, limits: BatchLimits, allowance: CallSize) -> Option<Vec<usize>> {
    let mut packer = BatchPacker::filled_to(limits, allowance);
    // A group's records were all taken by a batch within `limits`, so the first is never
    // refused; at least one goes whatever happens, so that delivery always moves on.
    let keep = group.iter().take_while(|&&index| packer.offer(records.get(index).len() as u64) == Offer::Added).count().max(1);
    (keep < group.len()).then(|| group.split_off(keep))
}

/// What an answered call says of its records.
struct ReadOutcomes {
    /// Indices (into the batch's records) of the records refused.
    failed: Vec<usize>,
    refusals: EntryRefusals,
    first_failure: Option<(String, String)>,
    accepted: CallSize,
    /// The entries at the call's end refused for throughput in a row (see
    /// [`CallAnswer::refused_at_the_end`]).
    refused_at_the_end: u64,
}

fn read_outcomes(records: &OutgoingRecords, group: &[usize], outcomes: &[RecordOutcome]) -> ReadOutcomes {
    let mut read = ReadOutcomes {
        failed: Vec::new(),
        refusals: EntryRefusals::default(),
        first_failure: None,
        accepted: CallSize::default(),
        refused_at_the_end: 0,
    };
    for (&index, outcome) in group.iter().zip(outcomes) {
        match outcome {
            RecordOutcome::Accepted => {
                read.accepted.bytes += records.get(index).len() as u64;
                read.accepted.records += 1;
            }
            RecordOutcome::Failed { code, message } => {
                read.failed.push(index);
                count_refusal(&mut read.refusals, code);
                read.first_failure.get_or_insert_with(|| (code.clone(), message.clone()));
            }
        }
    }
    if read.refusals.throughput > 0 {
        read.refused_at_the_end = refused_at_the_end(&outcomes[..group.len().min(outcomes.len())]);
    }
    read
}

/// The longest run of entries at a call's end that begins with a refused one and of which nine
/// in ten or more are refused (see [`CallAnswer::refused_at_the_end`]): a byte quota that runs
/// out within a call refuses every entry after the one that met it but a smaller one that still
/// fits, where records refused at random are scattered (one in ten refused at random leaves
/// nine of ten refused at a call's end over ten entries once in 10⁸ calls).
fn refused_at_the_end(outcomes: &[RecordOutcome]) -> u64 {
    let (mut entries, mut refused_entries, mut longest) = (0u64, 0u64, 0u64);
    for outcome in outcomes.iter().rev() {
        entries += 1;
        if matches!(outcome, RecordOutcome::Failed { code, .. } if is_throughput_refusal(code)) {
            refused_entries += 1;
            if refused_entries * 10 >= entries * 9 {
                longest = entries;
            }
        }
    }
    longest
}

/// Failures in a row of one batch's calls that are resent at once while the destination accepts
/// other calls: with a tenth of the records refused at random, three in a row happen once in a
/// thousand resends of a single record.
const FAULTS_RESENT_AT_ONCE: u32 = 3;

/// Counts a refused entry by what its code says: over the stream's throughput (a signal for
/// the pace, if it follows the rate), a transient fault of the service (resent, never a rate), or anything else.
fn count_refusal(refusals: &mut EntryRefusals, code: &str) {
    match code {
        _ if is_throughput_refusal(code) => refusals.throughput += 1,
        "InternalFailure" | "InternalFailureException" => refusals.internal += 1,
        _ => refusals.other += 1,
    }
}

/// Whether an entry's code refuses it for throughput ("ServiceUnavailable" is the older
/// documentation's spelling).
fn is_throughput_refusal(code: &str) -> bool {
    crate::sink::is_throughput_code(code) || code == "ServiceUnavailable"
}

/// Completes when `stop` has fired and `grace` has passed since.
async fn abandon_after(stop: CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// A dead letter for a record that was already packed; `offset` is its chunk's start (records
/// do not carry their own offsets), `detail` says which record of the chunk it is.
pub(super) fn record_dead_letter(
    file: FileIdentity,
    path: &[u8],
    offset: u64,
    reason: DeadLetterReason,
    detail: String,
    mut data: Vec<u8>,
) -> DeadLetter {
    let record_len = data.len() as u64;
    data.truncate(crate::queue::dead_letter::MAX_KEPT_RECORD_BYTES);
    DeadLetter { reason, detail, file, path: path.to_vec(), offset, record_len, record: data, recorded_at_ms: crate::source::now_ms() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(lengths: &[usize]) -> OutgoingRecords {
        let mut records = OutgoingRecords::with_capacity(1024);
        for &len in lengths {
            records.push(&vec![b'x'; len], false);
        }
        records
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_records: 500,
        max_bytes: 4 * 1024 * 1024,
        max_record_bytes: Some(1000 * 1024),
        billing_unit_bytes: 5 * 1024,
        record_overhead_bytes: 0,
    };

    /// [`split_past_allowance`] within Firehose's limits.
    fn split(records: &OutgoingRecords, group: &mut Vec<usize>, allowance: CallSize) -> Option<Vec<usize>> {
        split_past_allowance(records, group, LIMITS, allowance)
    }

    #[test]
    fn a_group_past_the_allowance_is_cut_after_its_longest_prefix_within_it() {
        let records = records(&[40, 40, 40, 300, 10]);
        let mut group = vec![0, 1, 2, 3, 4];
        let rest = split(&records, &mut group, CallSize { bytes: 100, records: 10 });
        assert_eq!((group, rest), (vec![0, 1], Some(vec![2, 3, 4])));
        let mut group = vec![3, 4];
        let rest = split(&records, &mut group, CallSize { bytes: 100, records: 10 });
        assert_eq!((group, rest), (vec![3], Some(vec![4])), "a record larger than the allowance still goes, alone");
        let mut group = vec![0, 1, 2];
        let rest = split(&records, &mut group, CallSize { bytes: u64::MAX, records: 2 });
        assert_eq!((group, rest), (vec![0, 1], Some(vec![2])));
        let mut group = vec![0, 1];
        assert_eq!(split(&records, &mut group, CallSize { bytes: 80, records: 2 }), None);
        assert_eq!(group, vec![0, 1]);
    }

    #[test]
    fn the_refused_end_of_a_call_is_the_longest_run_at_its_end_nine_tenths_refused_for_throughput() {
        // A: accepted, T: refused for throughput, I: InternalFailure.
        let outcomes = |pattern: &str| -> Vec<RecordOutcome> {
            pattern
                .chars()
                .map(|entry| match entry {
                    'A' => RecordOutcome::Accepted,
                    code => RecordOutcome::Failed {
                        code: if code == 'T' { "ServiceUnavailableException" } else { "InternalFailure" }.into(),
                        message: String::new(),
                    },
                })
                .collect()
        };
        assert_eq!(refused_at_the_end(&outcomes("AAAATTTT")), 4);
        assert_eq!(refused_at_the_end(&outcomes("TTTTTTTTTT")), 10, "refused in full");
        // A smaller record that still fit past the quota's edge does not end the run.
        assert_eq!(refused_at_the_end(&outcomes("AAAATTTTATTTTTTTTTTTTTTTTTTT")), 24);
        // Records refused at random are scattered; the last one refused is a run of one.
        assert_eq!(refused_at_the_end(&outcomes("ATAAAAATAAAAAAT")), 1);
        assert_eq!(refused_at_the_end(&outcomes("AAATTA")), 0, "the last entry accepted");
        // Entries refused for anything else are no quota's.
        assert_eq!(refused_at_the_end(&outcomes("AAAAIIII")), 0);
    }
}
