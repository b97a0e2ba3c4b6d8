//! The notifier's feed batches ([`Notifier::handle_batch`]): one claim
//! for every record of a batch, and one append for every sent code's
//! outcome.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use commands::deliveries::SentDeliveries;
use commands::executor::{append_together, DecidedRows};
use domain::envelope::Envelope;
use domain::otp::OtpCommand;
use projections::runtime::ErrorChain;
use uuid::Uuid;

use super::{delivery_id, Attempt, Claim, Handled, Notifier, NotifyError};

/// First claim of the records named by events (`$1` their ids, `$3`–`$5`
/// each event's aggregate type, id and sequence, aligned; `$2` the lease in
/// seconds), returning the sealed records. For a challenge's code the same
/// statement drops the pending deliveries of its older codes (a new code
/// replaces them: a late send or failure of an old code must not decide
/// the outcome). The events' sources are distinct (one code per challenge:
/// [`Notifier::handle_batch`] checks), so the older codes' records it
/// drops are never the ones it claims: those were claimed before
/// (`attempts > 0`), these never were.
const CLAIM_NEW: &str = "WITH req AS ( \
         SELECT * FROM unnest($1::uuid[], $3::text[], $4::text[], $5::int8[]) \
             AS r(delivery_id, source_type, source_id, source_sequence)), \
     superseded AS ( \
         DELETE FROM deliveries d USING req \
         WHERE req.source_type = 'otp_challenge' AND d.source_type = 'otp_challenge' \
           AND d.source_id = req.source_id AND d.source_sequence < req.source_sequence \
         RETURNING d.source_id), \
     claimable AS ( \
         SELECT delivery_id FROM deliveries WHERE delivery_id = ANY($1) AND attempts = 0 \
         ORDER BY delivery_id FOR UPDATE SKIP LOCKED) \
     UPDATE deliveries d SET attempts = d.attempts + 1, \
         next_attempt_at = now() + make_interval(secs => $2), \
         source_type = req.source_type, source_id = req.source_id, source_sequence = req.source_sequence \
     FROM req WHERE d.delivery_id = req.delivery_id AND d.delivery_id IN (SELECT delivery_id FROM claimable) \
     RETURNING d.delivery_id, d.attempts, d.expires_at <= now() AS expired, d.source_type, d.source_id, \
               d.sealed, (SELECT count(*) FROM superseded s WHERE s.source_id = d.source_id) AS superseded";

impl Notifier {
    /// Handles the envelopes of one feed batch as [`Notifier::handle`]
    /// handles one, with fewer statements: one claims the records of every
    /// envelope, the messages are sent one after the other, and one append records the outcome of every sent code and deletes
    /// those records ([`SentDeliveries`]); sent notices' records go in one
    /// `DELETE`. Returns what happened to each envelope that names a record,
    /// in batch order.
    ///
    /// A batch naming two records of one source (a code and its resend) is
    /// handled envelope by envelope, so that the later code drops the older
    /// one's record as it does across batches. When the joint append fails
    /// (a challenge moved meanwhile, say), each outcome is recorded on its
    /// own as [`Notifier::handle`] does.
    ///
    /// Every record is claimed at the start, so every send must end within
    /// half its lease from there ([`RetryPolicy::lease`]): one whose turn
    /// comes later is scheduled for a retry instead, and no other
    /// notifier's retry loop finds a lease over while the batch still
    /// holds it. The outcomes are recorded when the sends are done: a
    /// crash in between sends the batch's messages again after the lease
    /// (at least once, as for one record; a batch is what one feed read
    /// returned: [`Notifier::run`] takes at most 100 envelopes, a handful
    /// of codes under a login load at the default `NOTIFY_MIN_READ_MS`).
    ///
    /// # Errors
    /// [`NotifyError`] on database failures, after the outcomes of what was
    /// sent are recorded; the batch should then be delivered again (its
    /// claimed records are retried after their lease).
    #[tracing::instrument(skip_all, fields(batch = batch.len()))]
    pub async fn handle_batch(&self, batch: &[Envelope]) -> Result<Vec<Handled>, NotifyError> {
        let named: Vec<(&Envelope, Uuid)> =
            batch.iter().filter_map(|env| delivery_id(env).map(|id| (env, id))).collect();
        let mut sources = HashSet::new();
        let distinct = named
            .iter()
            .all(|(env, _)| sources.insert((env.aggregate_type.as_str(), env.aggregate_id.as_str())));
        if named.len() < 2 || !distinct {
            let mut done = Vec::with_capacity(named.len());
            for (env, _) in named {
                done.push(self.handle(env).await?);
            }
            return Ok(done);
        }
        // Every record is sent, and its outcome recorded, within its lease.
        let deadline = tokio::time::Instant::now() + self.policy.lease / 2;
        let mut claimed = self.claim_new(&named).await?;
        let unclaimed: Vec<Uuid> =
            named.iter().map(|(_, id)| *id).filter(|id| !claimed.contains_key(id)).collect();
        let present: HashSet<Uuid> = if unclaimed.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar::<_, Uuid>("SELECT delivery_id FROM deliveries WHERE delivery_id = ANY($1)")
                .bind(&unclaimed)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect()
        };
        let jobs: Vec<Result<Claim, Handled>> = named
            .iter()
            .map(|(_, id)| claimed.remove(id).ok_or_else(|| Self::unclaimed(*id, present.contains(id))))
            .collect();
        // One send at a time, as one envelope at a time did: an SMTP relay
        // may serve few sessions per client (overlapped sends beyond them
        // wait for a greeting until they time out), and lettre's pooled
        // connection makes back-to-back mails cheap.
        let mut tries: Vec<Result<Attempt, NotifyError>> = Vec::with_capacity(jobs.len());
        for job in jobs {
            tries.push(match job {
                Ok(claim) => self.try_send(claim, Some(deadline)).await,
                Err(unclaimed) => Ok(Attempt::Done(unclaimed)),
            });
        }
        // Record what was sent before answering any error: a sent record
        // left behind would be sent again after its lease.
        let sent: Vec<(&Claim, chrono::DateTime<Utc>)> = tries
            .iter()
            .filter_map(|t| match t {
                Ok(Attempt::Sent { claim, sent_at, channel, template }) => {
                    Self::log_sent(claim, channel, template);
                    Some((claim, *sent_at))
                }
                _ => None,
            })
            .collect();
        self.record_sent_many(&sent).await?;
        tries
            .into_iter()
            .map(|t| {
                t.map(|attempt| match attempt {
                    Attempt::Sent { .. } => Handled::Sent,
                    Attempt::Done(handled) => handled,
                })
            })
            .collect()
    }

    /// Claims the records `named` by events (first attempts only) with one
    /// statement ([`CLAIM_NEW`]), by record id.
    pub(super) async fn claim_new(
        &self,
        named: &[(&Envelope, Uuid)],
    ) -> Result<HashMap<Uuid, Claim>, NotifyError> {
        let ids: Vec<Uuid> = named.iter().map(|(_, id)| *id).collect();
        let types: Vec<&str> = named.iter().map(|(env, _)| env.aggregate_type.as_str()).collect();
        let sources: Vec<&str> = named.iter().map(|(env, _)| env.aggregate_id.as_str()).collect();
        let sequences: Vec<i64> = named.iter().map(|(env, _)| env.sequence).collect();
        let claims: Vec<Claim> = sqlx::query_as(CLAIM_NEW)
            .bind(&ids)
            .bind(self.policy.lease.as_secs_f64())
            .bind(&types)
            .bind(&sources)
            .bind(&sequences)
            .fetch_all(&self.pool)
            .await?;
        for claim in &claims {
            Self::log_superseded(claim);
        }
        Ok(claims.into_iter().map(|claim| (claim.delivery_id, claim)).collect())
    }

    /// [`Notifier::record_sent`] for the sent records of a batch: the
    /// challenges are read by one statement, and every `RecordDelivery`
    /// appended, with the deletion of those records, by one
    /// ([`append_together`], [`SentDeliveries`]); notices, outcomes already
    /// recorded and refused ones have their records deleted by one more.
    /// Should the joint append fail (a challenge moved since it was read),
    /// each of its outcomes is recorded on its own.
    pub(super) async fn record_sent_many(
        &self,
        sent: &[(&Claim, chrono::DateTime<Utc>)],
    ) -> Result<(), NotifyError> {
        let (codes, notices): (Vec<_>, Vec<_>) = sent.iter().partition(|(c, _)| c.challenge().is_some());
        let mut alone: Vec<Uuid> = notices.iter().map(|(c, _)| c.delivery_id).collect();
        // Every record gets its chance; the first failure is answered last.
        let mut first_error = None;
        let mut one_by_one = Vec::new();
        if let [one] = codes.as_slice() {
            one_by_one.push(*one);
        } else if !codes.is_empty() {
            let challenges: Vec<&str> = codes.iter().filter_map(|(c, _)| c.challenge()).collect();
            let name = "RecordDelivery";
            match self.otps.load_many(&challenges).await {
                Err(e) => {
                    tracing::warn!(error = %e, "challenges not read together; recording one by one");
                    one_by_one.extend(codes.iter().copied());
                }
                Ok(loaded) => {
                    let mut decided = Vec::with_capacity(codes.len());
                    let mut decided_claims = Vec::with_capacity(codes.len());
                    for ((claim, at), loaded) in codes.iter().zip(loaded) {
                        let cmd = OtpCommand::RecordDelivery { attempts: claim.attempts(), at: *at };
                        match self.otps.decide(loaded, cmd, Self::metadata(name)).await {
                            // An outcome already recorded: nothing to append.
                            Ok(d) if d.events.is_empty() => alone.push(claim.delivery_id),
                            Ok(d) => {
                                decided.push(d);
                                decided_claims.push((*claim, *at));
                            }
                            Err(e) => {
                                alone.push(claim.delivery_id);
                                Self::not_recorded(claim.challenge().unwrap_or_default(), name, &e);
                            }
                        }
                    }
                    if !decided.is_empty() {
                        let parts: Vec<&dyn DecidedRows> =
                            decided.iter().map(|d| d as &dyn DecidedRows).collect();
                        let records =
                            SentDeliveries(decided_claims.iter().map(|(c, _)| c.delivery_id).collect());
                        if let Err(e) = append_together(&self.pool, &parts, Some(&records)).await {
                            tracing::info!(error = %e, "outcomes not appended together; recording one by one");
                            one_by_one.extend(decided_claims);
                        }
                    }
                }
            }
        }
        for (claim, at) in one_by_one {
            if let Err(e) = self.record_sent(claim, at).await {
                first_error.get_or_insert(e);
            }
        }
        if !alone.is_empty() {
            if let Err(e) = self.delete_many_after_send(&alone).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes sent records with one statement, retrying briefly: a record
    /// left behind would be sent again after its lease.
    pub(super) async fn delete_many_after_send(&self, ids: &[Uuid]) -> Result<(), NotifyError> {
        let mut pause = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.deliveries.delete_many(ids).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 5 => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "cannot delete sent records; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
}
