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
//! - Submissions leave in the order they came.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use super::courier::Courier;
use crate::sink::{BatchPacker, Offer, OutgoingRecords, RecordOutcome, SinkError};

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

/// Serves resends until every sender is gone; aborted with its flusher otherwise (the courier
/// it serves holds a sender).
pub(super) async fn run_resender(courier: Arc<Courier>, mut resends: mpsc::Receiver<Resend>) {
    let mut waiting: VecDeque<Resend> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match resends.recv().await {
                Some(resend) => waiting.push_back(resend),
                None => return,
            }
        }
        gather(&courier, &mut resends, &mut waiting).await;
        let taken = submissions_that_fit(&courier, &waiting);
        if taken == 0 {
            if let Some(alone) = waiting.pop_front() {
                let _ = alone.reply.send(ResendReply::SendAlone);
            }
            continue;
        }
        let batches: Vec<Resend> = waiting.drain(..taken).collect();
        let mut together = OutgoingRecords::with_capacity(batches.iter().map(|resend| resend.records.byte_len()).sum());
        for resend in &batches {
            for index in 0..resend.records.len() {
                together.push(resend.records.get(index), false);
            }
        }
        let group: Vec<usize> = (0..together.len()).collect();
        let answer = courier.call(&together, &group).await;
        answer_each(batches, answer);
    }
}

/// Adds to `waiting` the leftovers that come while other batches' calls are out, until none is
/// out, the waiting ones fill a call, or [`GATHER_AT_MOST`] has passed.
async fn gather(courier: &Courier, resends: &mut mpsc::Receiver<Resend>, waiting: &mut VecDeque<Resend>) {
    let deadline = tokio::time::Instant::now() + GATHER_AT_MOST;
    loop {
        while let Ok(resend) = resends.try_recv() {
            waiting.push_back(resend);
        }
        let changed = courier.calls_out.changed.notified();
        tokio::pin!(changed);
        // Registered before the count is read: a call that ends in between still wakes this.
        changed.as_mut().enable();
        if !courier.calls_out.any() || submissions_that_fit(courier, waiting) < waiting.len() {
            return;
        }
        tokio::select! {
            resend = resends.recv() => match resend {
                Some(resend) => waiting.push_back(resend),
                None => return,
            },
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

/// Gives each submission its part of the shared call's answer.
fn answer_each(batches: Vec<Resend>, answer: Result<Vec<RecordOutcome>, SinkError>) {
    match answer {
        Ok(outcomes) => {
            let mut from = 0;
            for resend in batches {
                let to = from + resend.records.len();
                let _ = resend.reply.send(ResendReply::Answered(Ok(outcomes[from..to].to_vec())));
                from = to;
            }
        }
        Err(SinkError::InvalidRecords { .. }) if batches.len() > 1 => {
            for resend in batches {
                let _ = resend.reply.send(ResendReply::SendAlone);
            }
        }
        Err(error) => {
            for resend in batches {
                let _ = resend.reply.send(ResendReply::Answered(Err(error.clone())));
            }
        }
    }
}
