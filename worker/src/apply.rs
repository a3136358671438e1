//! Applying one event to the database, in one transaction.

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QuerySelect, TransactionTrait,
};

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

/// Records the activity log, upserts the scan and moves the case to this scan, all or nothing.
/// The case row is locked first, so concurrent events of one case apply one after the other,
/// and a case never moves back to an update received earlier than the one it shows.
pub async fn apply_event(
    db: &DatabaseConnection,
    event: &ScanEvent,
) -> Result<Applied, ApplyError> {
    let payload: serde_json::Value = serde_json::from_str(event.payload.get())
        .map_err(|e| ApplyError::BadPayload(e.to_string()))?;

    let txn = db.begin().await?;
    let case = cases::Entity::find_by_id(event.case_id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or(ApplyError::CaseMissing(event.case_id))?;

    if case.status != CASE_STATUS_ACTIVE {
        if already_recorded(&txn, event).await? {
            return Ok(Applied::Duplicate);
        }
        return Err(ApplyError::CaseNotActive { case_id: case.id, status: case.status });
    }

    if !record_activity(&txn, event, payload.clone()).await? {
        return Ok(Applied::Duplicate);
    }

    upsert_scan(&txn, event, payload).await?;

    let newer = case.scan_updated_at.is_none_or(|shown| shown <= event.received_at);
    if newer {
        move_case_to_scan(&txn, event).await?;
    }

    txn.commit().await?;
    Ok(Applied::Recorded)
}

async fn already_recorded(txn: &DatabaseTransaction, event: &ScanEvent) -> Result<bool, DbErr> {
    let count = activity_logs::Entity::find()
        .filter(activity_logs::Column::EventId.eq(event.event_id))
        .count(txn)
        .await?;
    Ok(count > 0)
}

/// Inserts the activity log row; `false` when this event id is recorded already.
async fn record_activity(
    txn: &DatabaseTransaction,
    event: &ScanEvent,
    payload: serde_json::Value,
) -> Result<bool, DbErr> {
    let row = activity_logs::ActiveModel {
        case_id: Set(event.case_id),
        patient_id: Set(event.patient_id.clone()),
        event_id: Set(event.event_id),
        action: Set(ACTION_SCAN_UPDATED.to_owned()),
        description: Set(format!("Scan {} updated for case {}", event.scan_id, event.case_number)),
        scan_id: Set(event.scan_id),
        payload: Set(payload),
        signer: Set(event.signer.clone()),
        received_at: Set(event.received_at),
        ..Default::default()
    };
    let inserted = activity_logs::Entity::insert(row)
        .on_conflict(OnConflict::column(activity_logs::Column::EventId).do_nothing().to_owned())
        .exec_without_returning(txn)
        .await?;
    Ok(inserted == 1)
}

/// Creates the scan, or replaces its payload unless the stored one was received later.
async fn upsert_scan(
    txn: &DatabaseTransaction,
    event: &ScanEvent,
    payload: serde_json::Value,
) -> Result<(), DbErr> {
    let row = scans::ActiveModel {
        case_id: Set(event.case_id),
        patient_id: Set(event.patient_id.clone()),
        scan_id: Set(event.scan_id),
        payload: Set(payload),
        last_event_id: Set(event.event_id),
        first_received_at: Set(event.received_at),
        last_received_at: Set(event.received_at),
        ..Default::default()
    };
    let on_conflict = OnConflict::columns([scans::Column::CaseId, scans::Column::ScanId])
        .update_columns([
            scans::Column::Payload,
            scans::Column::LastEventId,
            scans::Column::LastReceivedAt,
        ])
        .action_and_where(
            Expr::col((scans::Entity, scans::Column::LastReceivedAt)).lte(event.received_at),
        )
        .to_owned();
    scans::Entity::insert(row).on_conflict(on_conflict).exec_without_returning(txn).await?;
    Ok(())
}

async fn move_case_to_scan(txn: &DatabaseTransaction, event: &ScanEvent) -> Result<(), DbErr> {
    cases::Entity::update_many()
        .col_expr(cases::Column::LatestScanId, Expr::value(event.scan_id))
        .col_expr(cases::Column::ScanUpdatedAt, Expr::value(event.received_at))
        .col_expr(cases::Column::UpdatedAt, Expr::current_timestamp())
        .filter(cases::Column::Id.eq(event.case_id))
        .exec(txn)
        .await?;
    Ok(())
}
