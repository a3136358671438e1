//! `cases`, `scans` and `activity_logs`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE cases (
    id              bigserial   PRIMARY KEY,
    case_number     text        NOT NULL UNIQUE,
    patient_id      text        NOT NULL,
    status          text        NOT NULL DEFAULT 'active',
    latest_scan_id  bigint      NULL,
    scan_updated_at timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The gateway's lookup: the newest active case of a patient, read from the index alone.
CREATE INDEX cases_active_by_patient
    ON cases (patient_id, created_at DESC, id DESC)
    INCLUDE (case_number)
    WHERE status = 'active';

CREATE TABLE scans (
    id                bigserial   PRIMARY KEY,
    case_id           bigint      NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    patient_id        text        NOT NULL,
    scan_id           bigint      NOT NULL,
    payload           jsonb       NOT NULL,
    last_event_id     uuid        NOT NULL,
    first_received_at timestamptz NOT NULL,
    last_received_at  timestamptz NOT NULL,
    UNIQUE (case_id, scan_id)
);

CREATE TABLE activity_logs (
    id          bigserial   PRIMARY KEY,
    case_id     bigint      NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
    patient_id  text        NOT NULL,
    event_id    uuid        NOT NULL UNIQUE,
    action      text        NOT NULL,
    description text        NOT NULL,
    scan_id     bigint      NOT NULL,
    payload     jsonb       NOT NULL,
    signer      text        NULL,
    received_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX activity_logs_by_case ON activity_logs (case_id, created_at);
"#;

const DOWN: &str = r#"
DROP TABLE activity_logs;
DROP TABLE scans;
DROP TABLE cases;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
