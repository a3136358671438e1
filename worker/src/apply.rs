//! Applying events to the database: a batch of events in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::ArrayType;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QuerySelect, Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use scanhook_shared::entities::{ACTION_SCAN_UPDATED, CASE_STATUS_ACTIVE, activity_logs};
use scanhook_shared::statements::{INSERT_ACTIVITY, LOCK_CASES, MOVE_CASES, UPSERT_SCANS};
use scanhook_shared::{ScanEvent, db};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The activity log, the scan and (unless a later update came first) the case were written.
    Recorded,
    /// This event had been applied before; nothing changed.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("case {0} does not exist")]
    CaseMissing(i64),
    #[error("case {case_id} is no longer active (status {status:?})")]
    CaseNotActive { case_id: i64, status: String },
    #[error("payload is not storable JSON: {0}")]
    BadPayload(String),
    #[error("the database refused a value of the event: {0}")]
    Refused(DbErr),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// The database could not be reached while this event's turn came; the error itself was
    /// reported for an event before it.
    #[error("database unreachable: {0}")]
    Unreachable(String),
}

impl ApplyError {
    /// The error of applying one event alone: a value PostgreSQL refuses is this event's fault
    /// for good; anything else may pass later.
    pub fn alone(err: DbErr) -> Self {
        if db::is_data_error(&err) { Self::Refused(err) } else { Self::Database(err) }
    }

    /// Whether trying again later can never help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Database(_) | Self::Unreachable(_))
    }

    /// Whether the database could not be reached, as opposed to refusing this event.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Database(err) => db::is_unavailable(err),
            Self::Unreachable(_) => true,
            _ => false,
        }
    }
}

/// What became of one event of a batch. From [`apply_batch`] only permanent errors are per
/// event: a database error fails the whole batch.
pub type Outcome = Result<Applied, ApplyError>;

/// What the lock statement reads of a case.
struct LockedCase {
    status: String,
    scan_updated_at: Option<DateTime<Utc>>,
}

/// Applies `events` in one transaction and returns each one's outcome, in the order given.
///
/// For each event: the activity log is recorded (once per event id), the scan is created or
/// replaced unless the stored one was received later, and the case moves to the scan unless it
/// shows one received later. The cases are locked first, in id order, so batches that share a
/// case apply one after the other without deadlocking, and a case never moves back. Everything
/// that makes an event fail for good (a missing or closed case, a payload PostgreSQL cannot
/// store) is found before the first write, so the rest of the batch still commits; `Err` means
/// nothing was written. The statements have one shape whatever the batch size (arrays, not
/// lists of rows), so each connection prepares them once.
pub async fn apply_batch(
    db: &DatabaseConnection,
    events: &[&ScanEvent],
) -> Result<Vec<Outcome>, DbErr> {
    let mut outcomes: Vec<Option<Outcome>> = events.iter().map(|_| None).collect();

    let mut candidates: Vec<(usize, &ScanEvent)> = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        match check_values(event) {
            Err(err) => outcomes[index] = Some(Err(err)),
            Ok(()) => candidates.push((index, event)),
        }
    }
    if candidates.is_empty() {
        return Ok(finish(outcomes));
    }
    candidates.sort_by_key(|(_, event)| (event.case_id, event.event_id));
    let case_ids: Vec<i64> = {
        let mut ids: Vec<i64> = candidates.iter().map(|(_, e)| e.case_id).collect();
        ids.dedup();
        ids
    };

    let txn = db.begin().await?;
    let locked: HashMap<i64, LockedCase> = txn
        .query_all_raw(statement(LOCK_CASES, vec![case_ids.into()]))
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get::<i64>("", "id")?,
                LockedCase {
                    status: row.try_get("", "status")?,
                    scan_updated_at: row.try_get("", "scan_updated_at")?,
                },
            ))
        })
        .collect::<Result<_, DbErr>>()?;

    // Events whose case is gone or closed are not written; a closed case's event that had been
    // recorded before is a duplicate, not an error. Of several copies of one event id that can
    // be written, the first is, and the others are its duplicates (committed with it).
    let mut writable = Vec::with_capacity(candidates.len());
    let mut refused = Vec::new();
    let mut seen = HashSet::with_capacity(candidates.len());
    for &(index, event) in &candidates {
        match locked.get(&event.case_id) {
            None => outcomes[index] = Some(Err(ApplyError::CaseMissing(event.case_id))),
            Some(case) if case.status != CASE_STATUS_ACTIVE => refused.push((index, event, case)),
            Some(_) if !seen.insert(event.event_id) => {
                outcomes[index] = Some(Ok(Applied::Duplicate))
            }
            Some(_) => writable.push((index, event)),
        }
    }
    if !refused.is_empty() {
        let ids: Vec<Uuid> = refused.iter().map(|(_, event, _)| event.event_id).collect();
        let recorded = recorded_event_ids(&txn, ids).await?;
        for (index, event, case) in refused {
            outcomes[index] = Some(if recorded.contains(&event.event_id) {
                Ok(Applied::Duplicate)
            } else {
                Err(ApplyError::CaseNotActive {
                    case_id: event.case_id,
                    status: case.status.clone(),
                })
            });
        }
    }
    if !writable.is_empty() {
        let inserted: HashSet<Uuid> = txn
            .query_all_raw(statement(INSERT_ACTIVITY, activity_params(&writable)))
            .await?
            .iter()
            .map(|row| row.try_get::<Uuid>("", "event_id"))
            .collect::<Result<_, DbErr>>()?;
        let (recorded, duplicates): (Vec<_>, Vec<_>) =
            writable.into_iter().partition(|(_, event)| inserted.contains(&event.event_id));
        for (index, _) in duplicates {
            outcomes[index] = Some(Ok(Applied::Duplicate));
        }
        if !recorded.is_empty() {
            txn.execute_raw(statement(UPSERT_SCANS, scan_params(&recorded))).await?;
            if let Some(moves) = case_moves(&recorded, &locked) {
                txn.execute_raw(statement(MOVE_CASES, moves)).await?;
            }
        }
        for (index, _) in recorded {
            outcomes[index] = Some(Ok(Applied::Recorded));
        }
    }

    txn.commit().await?;
    Ok(finish(outcomes))
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn finish(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes.into_iter().map(|o| o.expect("every event of the batch has an outcome")).collect()
}

/// One array parameter: `value` of each event.
fn column<'a>(
    kind: ArrayType,
    events: impl IntoIterator<Item = &'a ScanEvent>,
    value: impl Fn(&ScanEvent) -> Value,
) -> Value {
    Value::Array(kind, Some(Box::new(events.into_iter().map(value).collect())))
}

/// The parameters of the activity log insert, for events sorted by case and event id.
fn activity_params(events: &[(usize, &ScanEvent)]) -> Vec<Value> {
    let events = || events.iter().map(|(_, event)| *event);
    vec![
        column(ArrayType::BigInt, events(), |e| e.case_id.into()),
        column(ArrayType::String, events(), |e| e.patient_id.clone().into()),
        column(ArrayType::Uuid, events(), |e| e.event_id.into()),
        ACTION_SCAN_UPDATED.into(),
        column(ArrayType::String, events(), |e| {
            format!("Scan {} updated for case {}", e.scan_id, e.case_number).into()
        }),
        column(ArrayType::BigInt, events(), |e| e.scan_id.into()),
        column(ArrayType::String, events(), |e| e.payload.get().to_owned().into()),
        column(ArrayType::String, events(), |e| e.signer.clone().unwrap_or_default().into()),
        column(ArrayType::ChronoDateTimeUtc, events(), |e| e.received_at.into()),
    ]
}

/// Of the events with the same key, the one received last.
fn latest_by<'a, K: Ord>(
    events: &[(usize, &'a ScanEvent)],
    key: impl Fn(&ScanEvent) -> K,
) -> Vec<&'a ScanEvent> {
    let mut latest: BTreeMap<K, &ScanEvent> = BTreeMap::new();
    for (_, event) in events {
        let kept = latest.entry(key(event)).or_insert(event);
        if kept.received_at <= event.received_at {
            *kept = event;
        }
    }
    latest.into_values().collect()
}

/// The parameters of the scan upsert: one row per scan, from the event of it received last.
fn scan_params(recorded: &[(usize, &ScanEvent)]) -> Vec<Value> {
    let rows = latest_by(recorded, |e| (e.case_id, e.scan_id));
    vec![
        column(ArrayType::BigInt, rows.iter().copied(), |e| e.case_id.into()),
        column(ArrayType::String, rows.iter().copied(), |e| e.patient_id.clone().into()),
        column(ArrayType::BigInt, rows.iter().copied(), |e| e.scan_id.into()),
        column(ArrayType::String, rows.iter().copied(), |e| e.payload.get().to_owned().into()),
        column(ArrayType::Uuid, rows.iter().copied(), |e| e.event_id.into()),
        column(ArrayType::ChronoDateTimeUtc, rows.iter().copied(), |e| e.received_at.into()),
    ]
}

/// The parameters that move each case to the latest received of its recorded events, unless
/// the case (locked, as read at the start) shows an update received later; `None` when no case
/// moves.
fn case_moves(
    recorded: &[(usize, &ScanEvent)],
    locked: &HashMap<i64, LockedCase>,
) -> Option<Vec<Value>> {
    let moves: Vec<&ScanEvent> = latest_by(recorded, |e| e.case_id)
        .into_iter()
        .filter(|event| {
            let shown = locked.get(&event.case_id).and_then(|case| case.scan_updated_at);
            shown.is_none_or(|shown| shown <= event.received_at)
        })
        .collect();
    if moves.is_empty() {
        return None;
    }
    Some(vec![
        column(ArrayType::BigInt, moves.iter().copied(), |e| e.case_id.into()),
        column(ArrayType::BigInt, moves.iter().copied(), |e| e.scan_id.into()),
        column(ArrayType::ChronoDateTimeUtc, moves.iter().copied(), |e| e.received_at.into()),
    ])
}

/// What PostgreSQL is known to refuse of an event, found before any statement: the NUL
/// character, in the payload (written `\u0000` in JSON text) or in a text column. The payload
/// is otherwise valid JSON already (the event would not have decoded); any other value
/// PostgreSQL refuses shows as [`ApplyError::Refused`] once the event is applied alone.
fn check_values(event: &ScanEvent) -> Result<(), ApplyError> {
    if has_nul(event.payload.get()) {
        return Err(ApplyError::BadPayload(
            "it contains the NUL character (\\u0000), which PostgreSQL cannot store".into(),
        ));
    }
    let texts = [Some(&event.patient_id), Some(&event.case_number), event.signer.as_ref()];
    if texts.into_iter().flatten().any(|text| text.contains('\0')) {
        return Err(ApplyError::BadPayload(
            "a text field of the event contains the NUL character, which PostgreSQL cannot store"
                .into(),
        ));
    }
    Ok(())
}

/// Whether JSON text holds an escaped NUL. Backslashes occur only in strings, each starting an
/// escape, so escapes are stepped over whole and `\\u0000` (a backslash, then text) is no NUL.
fn has_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|b| *b == b'\\') {
        let at = i + offset;
        match bytes.get(at + 1) {
            Some(b'u') => {
                if bytes.get(at + 2..at + 6) == Some(b"0000".as_slice()) {
                    return true;
                }
                i = at + 6;
            }
            Some(_) => i = at + 2,
            None => return false,
        }
        if i >= bytes.len() {
            return false;
        }
    }
    false
}

async fn recorded_event_ids(
    txn: &DatabaseTransaction,
    ids: Vec<Uuid>,
) -> Result<HashSet<Uuid>, DbErr> {
    let rows = activity_logs::Entity::find()
        .select_only()
        .column(activity_logs::Column::EventId)
        .filter(activity_logs::Column::EventId.is_in(ids))
        .into_tuple::<Uuid>()
        .all(txn)
        .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_escaped_nul_is_found_and_an_escaped_backslash_before_u0000_is_not() {
        assert!(!has_nul(r#"{"scan_id":1,"note":"fine \\u0000 as text"}"#));
        assert!(has_nul(r#"{"scan_id":1,"note":"a\u0000b"}"#));
        assert!(has_nul(r#"{"scan_id":1,"deep":[{"x":["\\\u0000"]}]}"#));
        assert!(has_nul(r#"{"scan_id":1,"k\u0000":true}"#));
        assert!(has_nul(r#"{"scan_id":1,"k":"\u00001"}"#));
        assert!(!has_nul(r#"{"scan_id":1,"q":"\"\u0001\n"}"#));
        assert!(!has_nul(r#"{"scan_id":1,"end":"\\"}"#));
    }
}
