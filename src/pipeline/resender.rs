//! Sending the refused leftovers of several batches in one call.
//!
//! A call answered in part (a few records refused at random: `InternalFailure`, a busy
//! partition's `ServiceUnavailableException`) leaves its batch a handful of records to send
//! again. Sent alone, each handful is a call of its own: with 10 % of records refused, a batch
//! of 500 needed 3.5 calls instead of 1, and since every call costs about the same CPU whatever
//! it carries (signing, TLS, the SDK, the answer), delivery fell to a third of its clean rate
//! (issue 17). Here the leftovers of all batches in flight share calls instead, as a group
//! commit does: leftovers wait while other batches' calls are still out (each may leave
//! leftovers of its own), for at most [`GATHER_AT_MOST`], and go as soon as no call is out or a
//! call is full. Acknowledgements are in queue order, so the batches whose calls are out are
//! those the first leftovers' batch waits for anyway. The calls per batch fall towards one plus
//! the noise's share (before the gathering, leftovers went as soon as the resender was free:
//! with calls answered in about a millisecond, nearly one resend call per batch, and delivery
//! at 10 % of records refused was 0.69 of its clean rate, CPU-bound on calls).
//!
//! Leftovers also *ride* in the calls of new batches ([`Leftovers::take_riders`]): a batch's
//! own call gives up to half of its room to the leftovers waiting, and sends what of its own no
//! longer fits in its next call (which takes riders in turn). Every call is then full whatever
//! the noise, and the leftovers of rounds too small to fill a call of their own (a tenth of a
//! tenth of a batch) go at once instead of waiting out [`GATHER_AT_MOST`].
//!
//! Invariants kept here:
//! - Every record handed in gets an answer of its own (accepted or refused, entry by entry, or
//!   the whole call's error), or `SendAlone`; nothing is taken as accepted that the destination
//!   did not accept, so each batch's acknowledgement stays exact (invariant 2).
//! - A call refused as invalid (`InvalidArgumentException`) with several batches' records in it
//!   says nothing of which record: each batch is told to send its own again alone, where the
//!   courier's halving finds the record, so a valid record is never dead-lettered for another
//!   batch's invalid one.
//! - Calls are paced and counted as any other (`Courier::call`), within the call limits and the
//!   learned pace's allowance; a leftover that is larger than a call may carry is sent alone.
//! - Submissions leave in the order they came, in the resender's calls and as riders alike.
//! - A call with riders refused as invalid tells its batch to send its own records again
//!   without riders, so that no record is dead-lettered for a rider's invalid one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::courier::Courier;
use crate::sink::rate::CallSize;
use crate::sink::{BatchLimits, BatchPacker, Offer, OutgoingRecords, RecordOutcome, SinkError};

/// Records of one batch to send again, with where to answer.
pub(super) struct Resend {
    /// The records as sent (a copy: the batch keeps its own).
    pub(super) records: OutgoingRecords,
    pub(super) reply: oneshot::Sender<ResendReply>,
}

/// What became of a [`Resend`].
pub(super) enum ResendReply {
    /// The call's answer for exactly these records, in their order.
    Answered(Result<Vec<RecordOutcome>, SinkError>),
    /// Send them alone (an invalid record in a shared call, or more than one call may carry).
    SendAlone,
}

/// Longest that leftovers wait for those of other calls still out: a far region's round trip,
/// well inside what an acknowledgement may take (flush_interval + 200 ms).
pub(super) const GATHER_AT_MOST: Duration = Duration::from_millis(50);

/// Leftovers waiting for a call: the resender's own, or a new batch's as riders.
#[derive(Default)]
pub(super) struct Leftovers {
    waiting: Mutex<VecDeque<Resend>>,
    arrived: Notify,
}

impl Leftovers {
    /// Queues `resend` behind those waiting.
    pub(super) fn submit(&self, resend: Resend) {
        self.lock().push_back(resend);
        self.arrived.notify_one();
    }

    /// Takes from the front the leftovers, whole, that fit in half of a call of `limits` filled
    /// to `allowance`: the other half stays the riding batch's, so that its own records still
    /// go at least half a call at a time.
    pub(super) fn take_riders(&self, limits: BatchLimits, allowance: CallSize) -> Vec<Resend> {
        let half =
            CallSize { bytes: allowance.bytes.min(limits.max_bytes) / 2, records: allowance.records.min(limits.max_records as u64) / 2 };
        if half.records == 0 {
            return Vec::new();
        }
        let mut waiting = self.lock();
        // Strictly within the half: a packer takes a record larger than its fill alone, and a
        // rider must never crowd the riding batch's own records out.
        let (mut bytes, mut records, mut taken) = (0u64, 0u64, 0);
        for resend in waiting.iter() {
            let (more_bytes, more_records) = (resend.records.byte_len() as u64, resend.records.len() as u64);
            if bytes + more_bytes > half.bytes || records + more_records > half.records {
                break;
            }
            (bytes, records, taken) = (bytes + more_bytes, records + more_records, taken + 1);
        }
        waiting.drain(..taken).collect()
    }

    /// Puts riders a call could not take back at the front, in their order.
    pub(super) fn put_back(&self, riders: Vec<Resend>) {
        let mut waiting = self.lock();
        for resend in riders.into_iter().rev() {
            waiting.push_front(resend);
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Resend>> {
        // A queue of records and reply channels: still whole after a panic elsewhere.
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Batches' own calls whose answers are not handled yet: each may leave leftovers that
/// should join the resender's next call.
#[derive(Default)]
pub(super) struct CallsOut {
    count: AtomicUsize,
    changed: Notify,
}

impl CallsOut {
    /// Counts a call as out until the returned guard is dropped.
    pub(super) fn enter(self: &Arc<Self>) -> CallOut {
        self.count.fetch_add(1, Ordering::SeqCst);
        CallOut(self.clone())
    }

    fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }
}

/// One call out (see [`CallsOut`]): held from before a batch's call until its answer is handled,
/// its leftovers (if any) handed to the resender included.
pub(super) struct CallOut(Arc<CallsOut>);

impl Drop for CallOut {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Sends the leftovers that no batch's call took; runs until aborted with its flusher.
pub(super) async fn run_resender(courier: Arc<Courier>) {
    let leftovers = &courier.leftovers;
    loop {
        let arrived = leftovers.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if leftovers.lock().is_empty() {
            arrived.await;
            continue;
        }
        gather(&courier).await;
        let batches: Vec<Resend> = {
            let mut waiting = leftovers.lock();
            let taken = submissions_that_fit(&courier, &waiting);
            if taken == 0 {
                // Riders may have taken them all meanwhile; else the first is larger than a call.
                if let Some(alone) = waiting.pop_front() {
                    let _ = alone.reply.send(ResendReply::SendAlone);
                }
                continue;
            }
            waiting.drain(..taken).collect()
        };
        let together = riders_records(&batches, 0);
        let group: Vec<usize> = (0..together.len()).collect();
        let answer = courier.call(&together, &group).await;
        let shared = batches.len() > 1;
        answer_each(batches, &answer, shared);
    }
}

/// Waits while other batches' calls are out (each may leave leftovers), until none is out, the
/// waiting leftovers fill a call, none waits any more (riders took them), or [`GATHER_AT_MOST`]
/// has passed.
async fn gather(courier: &Courier) {
    let deadline = tokio::time::Instant::now() + GATHER_AT_MOST;
    loop {
        let changed = courier.calls_out.changed.notified();
        let arrived = courier.leftovers.arrived.notified();
        tokio::pin!(changed, arrived);
        // Registered before the state is read: a change in between still wakes this.
        changed.as_mut().enable();
        arrived.as_mut().enable();
        {
            let waiting = courier.leftovers.lock();
            let fit = submissions_that_fit(courier, &waiting);
            if waiting.is_empty() || !courier.calls_out.any() || fit < waiting.len() {
                return;
            }
        }
        tokio::select! {
            _ = arrived => {}
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// How many of the first submissions, whole, one call takes at the pace in force.
fn submissions_that_fit(courier: &Courier, waiting: &VecDeque<Resend>) -> usize {
    let mut packer = BatchPacker::filled_to(courier.limits, courier.call_allowance());
    let mut taken = 0;
    for resend in waiting {
        let mut trial = packer;
        let fits = (0..resend.records.len()).all(|index| trial.offer(resend.records.get(index).len() as u64) == Offer::Added);
        if !fits {
            break;
        }
        packer = trial;
        taken += 1;
    }
    taken
}

/// The records of `riders`, in their order, with room for `more` bytes after them.
pub(super) fn riders_records(riders: &[Resend], more: usize) -> OutgoingRecords {
    let mut together = OutgoingRecords::with_capacity(riders.iter().map(|resend| resend.records.byte_len()).sum::<usize>() + more);
    for resend in riders {
        for index in 0..resend.records.len() {
            together.push(resend.records.get(index), false);
        }
    }
    together
}

/// The records `riders` hold in all.
pub(super) fn riders_len(riders: &[Resend]) -> usize {
    riders.iter().map(|resend| resend.records.len()).sum()
}

/// Gives each submission its part of the call's answer, which begins with theirs; `shared`: the
/// call held records of others too.
pub(super) fn answer_each(batches: Vec<Resend>, answer: &Result<Vec<RecordOutcome>, SinkError>, shared: bool) {
    let mut from = 0;
    for resend in batches {
        let to = from + resend.records.len();
        let reply = match answer {
            Ok(outcomes) => ResendReply::Answered(Ok(outcomes[from..to].to_vec())),
            // An invalid record in a shared call could be anyone's.
            Err(SinkError::InvalidRecords { .. }) if shared => ResendReply::SendAlone,
            Err(error) => ResendReply::Answered(Err(error.clone())),
        };
        let _ = resend.reply.send(reply);
        from = to;
    }
}
