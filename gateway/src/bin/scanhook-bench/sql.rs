//! Seeding, the database ceiling's pgbench script, and what is measured from activity_logs.

use std::path::Path;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement};

use scanhook_shared::{Settings, db};

use crate::{Load, MAX_CASES, amqp, body, patient_id};

async fn connect(settings: &Settings) -> Result<DatabaseConnection, String> {
    db::connect(&settings.database).await.map_err(|e| format!("cannot reach the database: {e}"))
}

async fn run(db: &DatabaseConnection, sql: &str) -> Result<u64, String> {
    let result = db.execute_unprepared(sql).await.map_err(|e| format!("{e}\nin: {sql}"))?;
    Ok(result.rows_affected())
}

async fn rows(db: &DatabaseConnection, sql: &str) -> Result<Vec<QueryResult>, String> {
    db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .map_err(|e| format!("{e}\nin: {sql}"))
}

async fn one<T: sea_orm::TryGetable>(db: &DatabaseConnection, sql: &str) -> Result<T, String> {
    let row = rows(db, sql).await?.into_iter().next().ok_or("no row")?;
    row.try_get_by_index::<T>(0).map_err(|e| e.to_string())
}

/// A UUID whose first 48 bits are the milliseconds of `at`, as the UUID v7 event ids are, so
/// that seeded rows land in the unique index the way real ones do.
fn time_ordered_uuid(at: &str) -> String {
    format!(
        "(left(lpad(to_hex((extract(epoch FROM {at}) * 1000)::bigint), 12, '0'), 8) || '-' \
         || right(lpad(to_hex((extract(epoch FROM {at}) * 1000)::bigint), 12, '0'), 4) \
         || substr(gen_random_uuid()::text, 14))::uuid"
    )
}

pub async fn seed(settings: &Settings, cases: usize, logs: usize) -> Result<(), String> {
    if cases > MAX_CASES {
        return Err(format!("at most {MAX_CASES} cases"));
    }
    let db = connect(settings).await?;
    let started = Instant::now();
    let existing: i64 =
        one(&db, "SELECT count(*) FROM cases WHERE case_number LIKE 'BENCH-%'").await?;
    let inserted = if (existing as usize) < cases {
        run(
            &db,
            &format!(
                "INSERT INTO cases (case_number, patient_id, status) \
                 SELECT 'BENCH-' || lpad(g::text, 6, '0'), 'bench-' || lpad(g::text, 6, '0'), 'active' \
                 FROM generate_series({existing}, {last}) AS g \
                 ON CONFLICT (case_number) DO NOTHING",
                last = cases - 1
            ),
        )
        .await?
    } else {
        0
    };
    if logs > 0 {
        let at = "(now() - make_interval(secs => ({logs} - g) * 10.0))"
            .replace("{logs}", &logs.to_string());
        let sql = format!(
            "WITH c AS (SELECT id, patient_id, case_number, row_number() OVER (ORDER BY id) - 1 AS k FROM cases), \
                  n AS (SELECT count(*) AS n FROM cases) \
             INSERT INTO activity_logs \
                 (case_id, patient_id, event_id, action, description, scan_id, payload, signer, received_at, created_at) \
             SELECT c.id, c.patient_id, {uuid}, 'scan.updated', \
                    'Scan ' || g || ' updated for case ' || c.case_number, g, \
                    jsonb_build_object('scan_id', g, 'device', 'bench-scanner-01', 'kind', 'intraoral', \
                                       'captured_at', '2025-07-14T09:21:07Z'), \
                    'secret-1', {at}, {at} \
             FROM generate_series(1, {logs}) AS g CROSS JOIN n JOIN c ON c.k = g % n.n",
            uuid = time_ordered_uuid(at.as_str()),
        );
        run(&db, &sql).await?;
    }
    for table in ["cases", "activity_logs", "scans"] {
        run(&db, &format!("VACUUM ANALYZE {table}")).await?;
    }
    let total_cases: i64 = one(&db, "SELECT count(*) FROM cases").await?;
    let total_logs: i64 = one(&db, "SELECT count(*) FROM activity_logs").await?;
    println!(
        "cases={total_cases} cases_inserted={inserted} activity_logs={total_logs} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub async fn reset(settings: &Settings) -> Result<(), String> {
    let db = connect(settings).await?;
    run(&db, "TRUNCATE activity_logs, scans").await?;
    run(
        &db,
        "UPDATE cases SET latest_scan_id = NULL, scan_updated_at = NULL \
         WHERE latest_scan_id IS NOT NULL OR scan_updated_at IS NOT NULL",
    )
    .await?;
    for table in ["cases", "activity_logs", "scans"] {
        run(&db, &format!("VACUUM ANALYZE {table}")).await?;
    }
    println!("reset=done");
    Ok(())
}

pub async fn marker(settings: &Settings) -> Result<(), String> {
    let db = connect(settings).await?;
    let id: i64 = one(&db, "SELECT coalesce(max(id), 0)::bigint FROM activity_logs").await?;
    println!("marker={id}");
    Ok(())
}

/// The (patient number, case id) of every load patient.
pub async fn case_ids(settings: &Settings, load: &Load) -> Result<Vec<(usize, i64)>, String> {
    let db = connect(settings).await?;
    let numbers: Vec<String> =
        load.patient_numbers().map(|k| format!("'{}'", patient_id(k))).collect();
    let found = rows(
        &db,
        &format!(
            "SELECT patient_id, id FROM cases WHERE status = 'active' AND patient_id IN ({}) ORDER BY id",
            numbers.join(",")
        ),
    )
    .await?;
    let mut cases = Vec::with_capacity(found.len());
    for row in found {
        let patient: String = row.try_get_by_index(0).map_err(|e| e.to_string())?;
        let id: i64 = row.try_get_by_index(1).map_err(|e| e.to_string())?;
        let k = patient.trim_start_matches("bench-").parse::<usize>().map_err(|e| e.to_string())?;
        cases.push((k, id));
    }
    if cases.len() != load.patients {
        return Err(format!(
            "{} of the {} load patients have an active case: run seed --cases {} first",
            cases.len(),
            load.patients,
            load.cases
        ));
    }
    Ok(cases)
}

/// Waits for the queue to be empty and the expected rows to be there. The drain rate is taken
/// from the rows themselves: applied events over the time between the first and the last
/// worker transaction (`created_at` is the transaction's start), so process start-up is not in
/// it; the wall-clock rate from this command's start, which includes start-up, is printed too.
pub async fn drain_wait(
    settings: &Settings,
    after_id: i64,
    expect: i64,
    stall_secs: u64,
) -> Result<(), String> {
    let started = Instant::now();
    let db = connect(settings).await?;
    let stall = Duration::from_secs(stall_secs);
    let mut last_change = Instant::now();
    let mut last_ready = u32::MAX;
    loop {
        let ready = amqp::ready(settings).await?;
        if ready == 0 {
            break;
        }
        if ready != last_ready {
            last_ready = ready;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            return Err(format!("the work queue stayed at {ready} messages for {stall_secs} s"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let count_sql = format!("SELECT count(*) FROM activity_logs WHERE id > {after_id}");
    let mut applied: i64 = -1;
    let mut last_change = Instant::now();
    loop {
        let now: i64 = one(&db, &count_sql).await?;
        if now >= expect {
            applied = now;
            break;
        }
        if now != applied {
            applied = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            return Err(format!(
                "{applied} of {expect} events applied and nothing more for {stall_secs} s (queue empty)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let span: f64 = one(
        &db,
        &format!(
            "SELECT extract(epoch FROM max(created_at) - min(created_at))::float8 \
             FROM activity_logs WHERE id > {after_id}"
        ),
    )
    .await?;
    let rate = if span > 0.0 { (applied - 1) as f64 / span } else { 0.0 };
    println!(
        "drain_events_per_s={rate:.0} applied={applied} steady_seconds={span:.2} wall_seconds={wall:.2} wall_events_per_s={:.0}",
        applied as f64 / wall
    );
    Ok(())
}

pub async fn lag(settings: &Settings, after_id: i64) -> Result<(), String> {
    let db = connect(settings).await?;
    let row = rows(
        &db,
        &format!(
            "SELECT count(*), \
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.999) WITHIN GROUP (ORDER BY ms), \
                    max(ms) \
             FROM (SELECT extract(epoch FROM created_at - received_at)::float8 * 1000 AS ms \
                   FROM activity_logs WHERE id > {after_id}) AS lags"
        ),
    )
    .await?
    .into_iter()
    .next()
    .ok_or("no row")?;
    let count: i64 = row.try_get_by_index(0).map_err(|e| e.to_string())?;
    if count == 0 {
        return Err("no activity logs after the marker".into());
    }
    let get = |i: usize| row.try_get_by_index::<f64>(i).map_err(|e| e.to_string());
    println!(
        "lag_events={count} lag_p50_ms={:.1} lag_p99_ms={:.1} lag_p999_ms={:.1} lag_max_ms={:.1}",
        get(1)?,
        get(2)?,
        get(3)?,
        get(4)?
    );
    Ok(())
}

/// The worker's transaction (worker/src/apply.rs, as sea-orm sends it; seen with
/// log_statement = 'all') for a pgbench client. What the worker binds as parameters comes from
/// pgbench variables; the event id, time and case columns come back from the first statement
/// with \gset, so there is no statement the worker does not send.
const PGBENCH_SCRIPT: &str = r#"-- Written by scanhook-bench pgbench-script: the worker's transaction, one event.
\set k random(0, :patients - 1)
\set cid :first_case_id + :k * :stride
\set scan random(1, 1099511627776)
BEGIN;
SELECT "cases"."id", "cases"."case_number", "cases"."patient_id", "cases"."status", "cases"."latest_scan_id", "cases"."scan_updated_at", "cases"."created_at", "cases"."updated_at", {event_id} AS event_id, clock_timestamp() AS received_at FROM "cases" WHERE "cases"."id" = :cid LIMIT 1 FOR UPDATE
\gset c_
INSERT INTO "activity_logs" ("case_id", "patient_id", "event_id", "action", "description", "scan_id", "payload", "signer", "received_at") VALUES (:cid, :c_patient_id, :c_event_id, 'scan.updated', 'Scan ' || :scan || ' updated for case ' || :c_case_number, :scan, {payload}, 'secret-1', :c_received_at) ON CONFLICT ("event_id") DO NOTHING;
INSERT INTO "scans" ("case_id", "patient_id", "scan_id", "payload", "last_event_id", "first_received_at", "last_received_at") VALUES (:cid, :c_patient_id, :scan, {payload}, :c_event_id, :c_received_at, :c_received_at) ON CONFLICT ("case_id", "scan_id") DO UPDATE SET "payload" = "excluded"."payload", "last_event_id" = "excluded"."last_event_id", "last_received_at" = "excluded"."last_received_at" WHERE "scans"."last_received_at" <= :c_received_at;
UPDATE "cases" SET "latest_scan_id" = :scan, "scan_updated_at" = :c_received_at, "updated_at" = CURRENT_TIMESTAMP WHERE "cases"."id" = :cid;
COMMIT;
"#;

/// Writes the script and prints the `-D` options pgbench needs, after checking that the load
/// patients' case ids are where the script computes them.
pub async fn pgbench_script(settings: &Settings, out: &Path, load: &Load) -> Result<(), String> {
    let cases = case_ids(settings, load).await?;
    let stride = (load.cases / load.patients) as i64;
    let first = cases[0].1;
    for (k, id) in &cases {
        if first + *k as i64 != *id {
            return Err(format!(
                "case ids are not contiguous ({} has id {id}): seed a fresh database",
                patient_id(*k)
            ));
        }
    }
    // The payload as the worker binds it: the scanner's body, as jsonb.
    let payload = body(0).replacen("\"scan_id\":0", "\"scan_id\":' || :scan || '", 1);
    let script = PGBENCH_SCRIPT
        .replace("{event_id}", &time_ordered_uuid("clock_timestamp()"))
        .replace("{payload}", &format!("('{payload}')::jsonb"));
    std::fs::write(out, script).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("-D patients={} -D first_case_id={first} -D stride={stride}", load.patients);
    Ok(())
}
