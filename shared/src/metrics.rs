//! The process's Prometheus recorder (the `metrics` facade with its Prometheus exporter), and the
//! gauges read from the pools when a scrape comes in.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::gauge;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::DatabaseConnection;

/// Bucket bounds of request, publish and processing latencies, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds of the lag from acceptance to application, in seconds.
const LAG_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];

/// Bucket bounds of the number of events in a worker's batch.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder of this process, installed on first call. Every later call, from any binary
/// or test in the same process, gets the same one.
pub fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("lag_seconds".into()), LAG_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("batch_events".into()), BATCH_BUCKETS)
                })
                .and_then(|b| b.set_buckets(LATENCY_BUCKETS))
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    // Fails only when another recorder is installed; then this one stays empty.
                    let _ = metrics::set_global_recorder(recorder);
                    let upkeep = handle.clone();
                    std::thread::spawn(move || {
                        loop {
                            std::thread::sleep(Duration::from_secs(5));
                            upkeep.run_upkeep();
                        }
                    });
                    handle
                }
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Connections of the database pool, open and idle.
pub fn record_database_pool(db: &DatabaseConnection, process: &'static str) {
    let pool = db.get_postgres_connection_pool();
    let size = f64::from(pool.size());
    let idle = pool.num_idle() as f64;
    gauge!("scanhook_db_pool_connections", "process" => process, "state" => "idle").set(idle);
    gauge!("scanhook_db_pool_connections", "process" => process, "state" => "in_use")
        .set((size - idle).max(0.0));
}
