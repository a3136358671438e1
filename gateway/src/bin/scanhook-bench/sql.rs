//! Seeding, the database ceiling's pgbench script, and what is measured from activity_logs.

use std::path::Path;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement};

use scanhook_shared::{Settings, db, statements};

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

/// Most events in one pgbench transaction: pgbench binds at most 255 variables per statement,
/// and each event takes two (its case and its scan) in the statement that builds the arrays.
pub const PGBENCH_MAX_BATCH: usize = 120;

/// The worker's transaction for a batch of `batch` events, for a pgbench client: the very
/// statements of the worker (`scanhook_shared::statements`), bound with arrays as the worker
/// binds them. pgbench has no array variables, so a query before the transaction (outside it:
/// the worker builds its arrays itself, which is no work of the database) turns random cases
/// and scans into the arrays' text, which `\gset` keeps for the statements.
fn pgbench_batch_script(batch: usize, payload: &str) -> String {
    let mut script = format!(
        "-- Written by scanhook-bench pgbench-script: the worker's transaction, {batch} events.\n"
    );
    for i in 1..=batch {
        script.push_str(&format!(
            "\\set cid{i} :first_case_id + random(0, :patients - 1) * :stride\n\
             \\set scan{i} random(1, 1099511627776)\n"
        ));
    }
    let array = |name: &str| {
        let items: Vec<String> = (1..=batch).map(|i| format!(":{name}{i}")).collect();
        format!("ARRAY[{}]::bigint[]", items.join(", "))
    };
    let number = "lpad((e.case_id - :first_case_id)::text, 6, '0')";
    let event_id = time_ordered_uuid("clock_timestamp()");
    let payload = payload.replace(":scan", "e.scan_id");
    // The worker moves each case of a batch once: so does this script (`moved_cases`; the
    // arrays that are longer pair with nothing).
    script.push_str(&format!(
        "SELECT array_agg(e.case_id)::text AS cases, \
         array_agg('bench-' || {number})::text AS patients, \
         array_agg({event_id})::text AS events, \
         array_agg('Scan ' || e.scan_id || ' updated for case BENCH-' || {number})::text AS descriptions, \
         array_agg(e.scan_id)::text AS scans, array_agg({payload})::text AS payloads, \
         array_agg('secret-1'::text)::text AS signers, \
         array_agg(clock_timestamp())::text AS times, \
         array_agg(DISTINCT e.case_id)::text AS moved_cases \
         FROM unnest({cases}, {scans}) AS e (case_id, scan_id)\n\\gset b_\n",
        cases = array("cid"),
        scans = array("scan"),
    ));
    let bind = |sql: &str, vars: &[&str]| {
        let mut sql = sql.to_owned();
        // Highest first, so that $1 does not take the front of $10.
        for (n, var) in vars.iter().enumerate().rev() {
            sql = sql.replace(&format!("${}", n + 1), var);
        }
        format!("{sql};\n")
    };
    script.push_str("BEGIN;\n");
    script.push_str(&bind(statements::LOCK_CASES, &[":b_cases"]));
    script.push_str(&bind(
        statements::INSERT_ACTIVITY,
        &[
            ":b_cases",
            ":b_patients",
            ":b_events",
            "'scan.updated'",
            ":b_descriptions",
            ":b_scans",
            ":b_payloads",
            ":b_signers",
            ":b_times",
        ],
    ));
    script.push_str(&bind(
        statements::UPSERT_SCANS,
        &[":b_cases", ":b_patients", ":b_scans", ":b_payloads", ":b_events", ":b_times"],
    ));
    script.push_str(&bind(statements::MOVE_CASES, &[":b_moved_cases", ":b_scans", ":b_times"]));
    script.push_str("COMMIT;\n");
    script
}

/// Writes the script and prints the `-D` options pgbench needs, after checking that the load
/// patients' case ids are where the script computes them.
pub async fn pgbench_script(
    settings: &Settings,
    out: &Path,
    load: &Load,
    batch: usize,
) -> Result<(), String> {
    if !(1..=PGBENCH_MAX_BATCH).contains(&batch) {
        return Err(format!("--batch takes 1 to {PGBENCH_MAX_BATCH} events"));
    }
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
    // The payload as the worker binds it: the scanner's body as text, cast by the statements.
    let payload = body(0).replacen("\"scan_id\":0", "\"scan_id\":' || :scan || '", 1);
    let script = pgbench_batch_script(batch, &format!("('{payload}')"));
    std::fs::write(out, script).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("-D patients={} -D first_case_id={first} -D stride={stride}", load.patients);
    Ok(())
}
