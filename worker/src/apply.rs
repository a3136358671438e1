//! Applying events to the database: a batch of events in one transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Order};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Statement,
    TransactionTrait, Value,
};
use uuid::Uuid;

use scanhook_shared::entities::{
    ACTION_SCAN_UPDATED, CASE_STATUS_ACTIVE, activity_logs, cases, scans,
};
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
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl ApplyError {
    /// Whether trying again later can never help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Database(_))
    }

    /// Whether the database could not be reached, as opposed to refusing this event.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Database(err) if db::is_unavailable(err))
    }
}

/// What became of one event of a batch. Only permanent errors are per event: a database error
/// fails the whole batch (see [`apply_batch`]).
pub type Outcome = Result<Applied, ApplyError>;

/// An event that passed the checks made before any write, with its payload parsed.
struct Writable<'a> {
    index: usize,
    event: &'a ScanEvent,
    payload: serde_json::Value,
}

/// Applies `events` in one transaction and returns each one's outcome, in the order given.
///
/// For each event: the activity log is recorded (once per event id), the scan is created or
/// replaced unless the stored one was received later, and the case moves to the scan unless it
/// shows one received later. The cases are locked first, in id order, so batches that share a
/// case apply one after the other without deadlocking, and a case never moves back. Everything
/// that makes an event fail for good (a missing or closed case, a payload PostgreSQL cannot
/// store) is found before the first write, so the rest of the batch still commits; `Err` means
/// nothing was written.
pub async fn apply_batch(
    db: &DatabaseConnection,
    events: &[&ScanEvent],
) -> Result<Vec<Outcome>, DbErr> {
    let mut outcomes: Vec<Option<Outcome>> = events.iter().map(|_| None).collect();

    // Payload checks and, within the batch, one copy per event id.
    let mut seen = HashSet::with_capacity(events.len());
    let mut candidates = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        match storable_payload(event) {
            Err(err) => outcomes[index] = Some(Err(err)),
            Ok(_) if !seen.insert(event.event_id) => outcomes[index] = Some(Ok(Applied::Duplicate)),
            Ok(payload) => candidates.push(Writable { index, event, payload }),
        }
    }
    if candidates.is_empty() {
        return Ok(finish(outcomes));
    }

    let txn = db.begin().await?;
    let case_ids: Vec<i64> = candidates
        .iter()
        .map(|c| c.event.case_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let locked: HashMap<i64, cases::Model> = cases::Entity::find()
        .filter(cases::Column::Id.is_in(case_ids))
        .order_by(cases::Column::Id, Order::Asc)
        .lock_exclusive()
        .all(&txn)
        .await?
        .into_iter()
        .map(|case| (case.id, case))
        .collect();

    // Events whose case is gone or closed are not written; a closed case's event that had been
    // recorded before is a duplicate, not an error.
    let mut writable = Vec::with_capacity(candidates.len());
    let mut refused = Vec::new();
    for candidate in candidates {
        match locked.get(&candidate.event.case_id) {
            None => {
                outcomes[candidate.index] =
                    Some(Err(ApplyError::CaseMissing(candidate.event.case_id)));
            }
            Some(case) if case.status != CASE_STATUS_ACTIVE => refused.push((candidate, case)),
            Some(_) => writable.push(candidate),
        }
    }
    if !refused.is_empty() {
        let ids: Vec<Uuid> = refused.iter().map(|(c, _)| c.event.event_id).collect();
        let recorded = recorded_event_ids(&txn, ids).await?;
        for (candidate, case) in refused {
            outcomes[candidate.index] = Some(if recorded.contains(&candidate.event.event_id) {
                Ok(Applied::Duplicate)
            } else {
                Err(ApplyError::CaseNotActive { case_id: case.id, status: case.status.clone() })
            });
        }
    }

    if !writable.is_empty() {
        writable.sort_by_key(|w| (w.event.case_id, w.event.event_id));
        let inserted = record_activities(&txn, &writable).await?;
        let (recorded, duplicates): (Vec<_>, Vec<_>) =
            writable.into_iter().partition(|w| inserted.contains(&w.event.event_id));
        for duplicate in duplicates {
            outcomes[duplicate.index] = Some(Ok(Applied::Duplicate));
        }
        if !recorded.is_empty() {
            upsert_scans(&txn, &recorded).await?;
            move_cases(&txn, &recorded, &locked).await?;
        }
        for event in &recorded {
            outcomes[event.index] = Some(Ok(Applied::Recorded));
        }
    }

    txn.commit().await?;
    Ok(finish(outcomes))
}

fn finish(outcomes: Vec<Option<Outcome>>) -> Vec<Outcome> {
    outcomes.into_iter().map(|o| o.expect("every event of the batch has an outcome")).collect()
}

/// The payload as PostgreSQL's `jsonb` will take it: it refuses the NUL character.
fn storable_payload(event: &ScanEvent) -> Result<serde_json::Value, ApplyError> {
    let payload: serde_json::Value = serde_json::from_str(event.payload.get())
        .map_err(|e| ApplyError::BadPayload(e.to_string()))?;
    if has_nul(&payload) {
        return Err(ApplyError::BadPayload(
            "it contains the NUL character (\\u0000), which PostgreSQL cannot store".into(),
        ));
    }
    Ok(payload)
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(fields) => {
            fields.iter().any(|(key, value)| key.contains('\0') || has_nul(value))
        }
        _ => false,
    }
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

/// Inserts the activity log rows and returns the event ids that were new.
async fn record_activities(
    txn: &DatabaseTransaction,
    writable: &[Writable<'_>],
) -> Result<HashSet<Uuid>, DbErr> {
    let rows = writable.iter().map(|w| {
        let event = w.event;
        activity_logs::ActiveModel {
            case_id: Set(event.case_id),
            patient_id: Set(event.patient_id.clone()),
            event_id: Set(event.event_id),
            action: Set(ACTION_SCAN_UPDATED.to_owned()),
            description: Set(format!(
                "Scan {} updated for case {}",
                event.scan_id, event.case_number
            )),
            scan_id: Set(event.scan_id),
            payload: Set(w.payload.clone()),
            signer: Set(event.signer.clone()),
            received_at: Set(event.received_at),
            ..Default::default()
        }
    });
    let mut insert = activity_logs::Entity::insert_many(rows)
        .on_conflict(OnConflict::column(activity_logs::Column::EventId).do_nothing().to_owned())
        .into_query();
    insert.returning_col(activity_logs::Column::EventId);
    let rows = txn.query_all(&insert).await?;
    rows.iter().map(|row| row.try_get::<Uuid>("", "event_id")).collect()
}

/// Creates each scan, or replaces its payload unless the stored one was received later. Two
/// events of one scan in the batch: the later received is written.
async fn upsert_scans(txn: &DatabaseTransaction, recorded: &[Writable<'_>]) -> Result<(), DbErr> {
    let mut latest: BTreeMap<(i64, i64), &Writable<'_>> = BTreeMap::new();
    for w in recorded {
        let key = (w.event.case_id, w.event.scan_id);
        if latest.get(&key).is_none_or(|kept| kept.event.received_at <= w.event.received_at) {
            latest.insert(key, w);
        }
    }
    let rows = latest.values().map(|w| {
        let event = w.event;
        scans::ActiveModel {
            case_id: Set(event.case_id),
            patient_id: Set(event.patient_id.clone()),
            scan_id: Set(event.scan_id),
            payload: Set(w.payload.clone()),
            last_event_id: Set(event.event_id),
            first_received_at: Set(event.received_at),
            last_received_at: Set(event.received_at),
            ..Default::default()
        }
    });
    let on_conflict = OnConflict::columns([scans::Column::CaseId, scans::Column::ScanId])
        .update_columns([
            scans::Column::Payload,
            scans::Column::LastEventId,
            scans::Column::LastReceivedAt,
        ])
        .action_and_where(
            Expr::col((scans::Entity, scans::Column::LastReceivedAt))
                .lte(Expr::col((Alias::new("excluded"), scans::Column::LastReceivedAt))),
        )
        .to_owned();
    scans::Entity::insert_many(rows).on_conflict(on_conflict).exec_without_returning(txn).await?;
    Ok(())
}

/// Moves each case to the latest received of its recorded events, unless the case (locked, as
/// read at the start) shows an update received later.
async fn move_cases(
    txn: &DatabaseTransaction,
    recorded: &[Writable<'_>],
    locked: &HashMap<i64, cases::Model>,
) -> Result<(), DbErr> {
    let mut latest: BTreeMap<i64, (i64, DateTime<Utc>)> = BTreeMap::new();
    for w in recorded {
        let event = w.event;
        let shown = locked.get(&event.case_id).and_then(|case| case.scan_updated_at);
        if shown.is_some_and(|shown| shown > event.received_at) {
            continue;
        }
        let entry = latest.entry(event.case_id).or_insert((event.scan_id, event.received_at));
        if entry.1 <= event.received_at {
            *entry = (event.scan_id, event.received_at);
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(latest.len());
    let mut values: Vec<Value> = Vec::with_capacity(latest.len() * 3);
    for (case_id, (scan_id, received_at)) in latest {
        let n = values.len();
        rows.push(format!("(${}::bigint, ${}::bigint, ${}::timestamptz)", n + 1, n + 2, n + 3));
        values.extend([case_id.into(), scan_id.into(), received_at.into()]);
    }
    let sql = format!(
        "UPDATE cases SET latest_scan_id = moved.scan_id, scan_updated_at = moved.received_at, \
         updated_at = CURRENT_TIMESTAMP \
         FROM (VALUES {}) AS moved (id, scan_id, received_at) WHERE cases.id = moved.id",
        rows.join(", ")
    );
    txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_anywhere_in_the_payload_is_found() {
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
        assert!(!has_nul(&parse(r#"{"scan_id":1,"note":"fine \\u0000 as text"}"#)));
        assert!(has_nul(&parse(r#"{"scan_id":1,"note":"a\u0000b"}"#)));
        assert!(has_nul(&parse(r#"{"scan_id":1,"deep":[{"x":["\u0000"]}]}"#)));
        assert!(has_nul(&parse(r#"{"scan_id":1,"k\u0000":true}"#)));
    }
}
