//! Retryable writes: for each logical session, the reply to its newest `txnNumber`, stored
//! in the same transaction as the write it answers, so that a retry after a lost reply (or a
//! restart) gets that reply instead of applying the write a second time.

use std::time::Duration;

use bson::{doc, Bson, Document};
use redb::{ReadableTable, TableDefinition};

use super::WriteCtx;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::keys;

/// Key encoding of an `lsid` → BSON `{ txnNumber, reply, lastUse }`.
pub(super) const SESSIONS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("sessions");

/// A session unused for this long forgets its retryable write, as `hello` announces with
/// `logicalSessionTimeoutMinutes: 30`.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The identity of a retryable write: its session and transaction number.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RetryId {
    /// The `lsid` document the driver sent.
    pub(crate) lsid: Document,
    /// The `txnNumber`.
    pub(crate) txn: i64,
    /// The session's key in [`SESSIONS`], encoded once.
    key: Vec<u8>,
}

impl RetryId {
    /// The write `txn` of session `lsid`.
    pub(crate) fn new(lsid: Document, txn: i64) -> Self {
        let key = keys::encode(&Bson::Document(lsid.clone()));
        Self { lsid, txn, key }
    }
}

fn expired(record: &Document, now: bson::DateTime) -> bool {
    let timeout = i64::try_from(SESSION_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    record.get_datetime("lastUse").map_or(true, |last| {
        last.timestamp_millis().saturating_add(timeout) < now.timestamp_millis()
    })
}

impl WriteCtx<'_> {
    /// The recorded reply when `id` was already applied; `None` when it is new.
    /// `TransactionTooOld` (225) when the session has since moved on to a newer `txnNumber`.
    pub(crate) fn retried_reply(&self, id: &RetryId) -> CommandResult<Option<Document>> {
        let table = self.txn.open_table(SESSIONS).map_err(|e| self.fail(e))?;
        let Some(bytes) = table.get(id.key.as_slice()).map_err(|e| self.fail(e))? else {
            return Ok(None);
        };
        let record = Document::from_reader(bytes.value()).map_err(|e| self.fail(e))?;
        if expired(&record, self.wall) {
            return Ok(None);
        }
        let newest = record.get_i64("txnNumber").unwrap_or(i64::MIN);
        if newest > id.txn {
            return Err(CommandError::new(
                ErrorCode::TransactionTooOld,
                format!(
                    "Retryable write with txnNumber {} is prohibited on session {} because a newer retryable write with txnNumber {newest} has already started on this session.",
                    id.txn,
                    Bson::Document(id.lsid.clone()),
                ),
            ));
        }
        if newest < id.txn {
            return Ok(None);
        }
        Ok(record.get_document("reply").ok().cloned())
    }

    /// Records `reply` as the answer to `id`, replacing the session's older record.
    pub(crate) fn record_reply(&mut self, id: &RetryId, reply: &Document) -> CommandResult<()> {
        let record = doc! { "txnNumber": id.txn, "reply": reply.clone(), "lastUse": self.wall };
        let bytes = bson::to_vec(&record).map_err(|e| self.fail(e))?;
        let mut table = self.txn.open_table(SESSIONS).map_err(|e| self.fail(e))?;
        table
            .insert(id.key.as_slice(), bytes.as_slice())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Forgets the records of sessions unused for [`SESSION_TIMEOUT`]; returns how many.
    pub(crate) fn expire_sessions(&mut self) -> CommandResult<usize> {
        let now = self.wall;
        let mut table = self.txn.open_table(SESSIONS).map_err(|e| self.fail(e))?;
        let mut removed = 0;
        table
            .retain(|_, bytes| {
                let keep = Document::from_reader(bytes).is_ok_and(|r| !expired(&r, now));
                removed += usize::from(!keep);
                keep
            })
            .map_err(|e| self.fail(e))?;
        Ok(removed)
    }
}
