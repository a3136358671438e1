//! sea-orm entities of the tables the service reads and writes. The table and column names are
//! shared with the rest of the Dentist system; the schema itself lives in `migrations/`.

pub mod activity_logs;
pub mod cases;
pub mod scans;

/// The `status` of a case that accepts scan updates.
pub const CASE_STATUS_ACTIVE: &str = "active";
/// The `action` recorded in `activity_logs` for an applied scan update.
pub const ACTION_SCAN_UPDATED: &str = "scan.updated";
