//! `scanhook seed`: demo patients, each with an active case, to send notifications for.

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use scanhook_shared::{Settings, db};

/// Most patients one call creates.
pub const MAX_PATIENTS: u32 = 1_000_000;

/// Creates (or makes active again) cases `<PREFIX>-000001` .. for patients `<prefix>-000001` ..,
/// and returns the (patient id, case number) pairs.
pub async fn seed(
    settings: &Settings,
    prefix: &str,
    count: u32,
) -> Result<Vec<(String, String)>, String> {
    if count == 0 || count > MAX_PATIENTS {
        return Err(format!("--count must be between 1 and {MAX_PATIENTS}"));
    }
    let valid = !prefix.is_empty()
        && prefix.len() <= 50
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err("--prefix must be 1 to 50 characters of A-Za-z0-9._-".into());
    }
    let db = db::connect(&settings.database)
        .await
        .map_err(|e| format!("cannot reach the database: {e}"))?;
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO cases (case_number, patient_id, status) \
         SELECT upper($1) || '-' || lpad(g::text, 6, '0'), $1 || '-' || lpad(g::text, 6, '0'), 'active' \
         FROM generate_series(1, $2::int) AS g \
         ON CONFLICT (case_number) DO UPDATE SET status = 'active', updated_at = now() \
         RETURNING patient_id, case_number",
        [prefix.into(), i64::from(count).into()],
    );
    let rows = db.query_all_raw(statement).await.map_err(|e| format!("seeding failed: {e}"))?;
    let _ = db.close().await;
    let mut pairs = rows
        .iter()
        .map(|row| {
            let patient = row.try_get_by_index::<String>(0).map_err(|e| e.to_string())?;
            let case = row.try_get_by_index::<String>(1).map_err(|e| e.to_string())?;
            Ok((patient, case))
        })
        .collect::<Result<Vec<_>, String>>()?;
    pairs.sort();
    Ok(pairs)
}
