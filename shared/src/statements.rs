//! The statements the worker applies a batch of events with (worker/src/apply.rs). Each binds
//! one array per column, so it has one shape whatever the batch size and each connection
//! prepares it once. They live here so that the benchmark's database ceiling runs the very same
//! statements under pgbench.

/// Locks the cases of a batch, in id order.
pub const LOCK_CASES: &str = "SELECT id, status, scan_updated_at FROM cases \
     WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE";

/// The activity log rows; returns the event ids that were new. `signer` is '' for none.
pub const INSERT_ACTIVITY: &str = "INSERT INTO activity_logs \
     (case_id, patient_id, event_id, action, description, scan_id, payload, signer, received_at) \
     SELECT e.case_id, e.patient_id, e.event_id, $4, e.description, e.scan_id, e.payload::jsonb, \
     NULLIF(e.signer, ''), e.received_at \
     FROM unnest($1::bigint[], $2::text[], $3::uuid[], $5::text[], $6::bigint[], $7::text[], \
     $8::text[], $9::timestamptz[]) \
     AS e (case_id, patient_id, event_id, description, scan_id, payload, signer, received_at) \
     ON CONFLICT (event_id) DO NOTHING RETURNING event_id";

/// Creates each scan, or replaces its payload unless the stored one was received later.
pub const UPSERT_SCANS: &str = "INSERT INTO scans \
     (case_id, patient_id, scan_id, payload, last_event_id, first_received_at, last_received_at) \
     SELECT e.case_id, e.patient_id, e.scan_id, e.payload::jsonb, e.event_id, e.received_at, \
     e.received_at \
     FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::uuid[], \
     $6::timestamptz[]) AS e (case_id, patient_id, scan_id, payload, event_id, received_at) \
     ON CONFLICT (case_id, scan_id) DO UPDATE SET payload = excluded.payload, \
     last_event_id = excluded.last_event_id, last_received_at = excluded.last_received_at \
     WHERE scans.last_received_at <= excluded.last_received_at";

/// Moves each case to its scan.
pub const MOVE_CASES: &str = "UPDATE cases SET latest_scan_id = moved.scan_id, \
     scan_updated_at = moved.received_at, updated_at = CURRENT_TIMESTAMP \
     FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS moved (id, scan_id, received_at) \
     WHERE cases.id = moved.id";
