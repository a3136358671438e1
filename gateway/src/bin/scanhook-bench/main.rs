//! `scanhook-bench`: the pieces of `scripts/bench.sh` that need Rust: the two ceilings, seeding,
//! the backlog, the pre-signed requests for wrk and the measurements read from PostgreSQL.
//!
//! Every subcommand reads the same settings as the services (`SCANHOOK__DATABASE__URL`,
//! `SCANHOOK__AMQP__URL`, `SCANHOOK__AMQP__QUEUE`, `SCANHOOK__WEBHOOK__SECRET`, ...) and prints
//! its figures as `key=value` words on its last line, for the script to pick up.

mod amqp;
mod http;
mod sql;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::value::RawValue;
use uuid::Uuid;

use scanhook_shared::{ScanEvent, Settings};

#[derive(Parser)]
#[command(name = "scanhook-bench", about = "Benchmark pieces for scripts/bench.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A bare hyper server with the gateway's connection settings that answers every request
    /// with the gateway's 202 envelope, doing no other work.
    HttpCeiling {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// N concurrent publishers, each publishing a persistent message and waiting for its confirm
    /// before the next, into a throwaway quorum queue that is deleted afterwards.
    BrokerCeiling {
        #[arg(long, default_value_t = 32)]
        publishers: usize,
        /// Seconds of publishing, after one second of warm-up.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Message size in bytes (default: the size of the gateway's event for a bench request).
        #[arg(long)]
        size: Option<usize>,
        /// Connections the publishers' channels are spread over (the gateway's pool has 2).
        #[arg(long, default_value_t = 2)]
        connections: usize,
    },
    /// Publishes N valid events for the load patients straight to the work queue, with
    /// pipelined confirms, as a backlog for the workers.
    Backlog {
        #[arg(long)]
        events: usize,
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        /// Cases in the table; the load patients are spread evenly over them.
        #[arg(long, default_value_t = 1000)]
        cases: usize,
    },
    /// Empties the work queue (and says how many messages it held).
    Purge,
    /// Writes the pre-signed requests (path, signature, body; one a line) and the wrk script
    /// that sends them, into a directory.
    Requests {
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        #[arg(long, default_value_t = 1000)]
        cases: usize,
        /// Distinct requests, each with its own scan_id, cycled through by wrk.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
    /// The body and signature of one bench request, for a load generator that sends one body.
    OneRequest,
    /// Inserts active cases `bench-000000` .. up to N in all, and optionally existing activity
    /// logs, with generate_series; then VACUUM ANALYZE.
    Seed {
        #[arg(long)]
        cases: usize,
        /// Activity logs to add, spread over the cases (the table is not emptied first).
        #[arg(long, default_value_t = 0)]
        logs: usize,
    },
    /// Empties activity_logs and scans and takes every case back to no scan.
    Reset,
    /// The highest activity_logs id now, to count what is applied after it.
    Marker,
    /// Waits until EXPECT activity logs past the marker exist, then prints the drain rate.
    DrainWait {
        #[arg(long)]
        after_id: i64,
        #[arg(long)]
        expect: i64,
        /// Give up when no event has been applied for this many seconds.
        #[arg(long, default_value_t = 60)]
        stall_secs: u64,
    },
    /// Percentiles of created_at - received_at of the activity logs past the marker.
    Lag {
        #[arg(long)]
        after_id: i64,
    },
    /// Writes the pgbench script of the worker's transaction and prints the pgbench variables.
    PgbenchScript {
        #[arg(long)]
        out: std::path::PathBuf,
        /// Events per transaction, as the worker's `batch_size` when a backlog fills its batches.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        #[arg(long, default_value_t = 1000)]
        cases: usize,
    },
    /// The figures of an oha run from its JSON output (`--output-format json`).
    OhaSummary {
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// The effective settings the benchmark depends on.
    Settings,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => return fail(&err.to_string()),
    };
    let result = match cli.command {
        Command::HttpCeiling { listen } => http::ceiling(&settings, listen).await,
        Command::BrokerCeiling { publishers, duration, size, connections } => {
            amqp::ceiling(&settings, publishers, duration, size, connections).await
        }
        Command::Backlog { events, patients, cases } => {
            amqp::backlog(&settings, events, &Load::new(patients, cases)).await
        }
        Command::Purge => amqp::purge(&settings).await,
        Command::Requests { out, patients, cases, count } => {
            http::requests(&settings, &out, &Load::new(patients, cases), count)
        }
        Command::OneRequest => http::one_request(&settings),
        Command::Seed { cases, logs } => sql::seed(&settings, cases, logs).await,
        Command::Reset => sql::reset(&settings).await,
        Command::Marker => sql::marker(&settings).await,
        Command::DrainWait { after_id, expect, stall_secs } => {
            sql::drain_wait(&settings, after_id, expect, stall_secs).await
        }
        Command::Lag { after_id } => sql::lag(&settings, after_id).await,
        Command::PgbenchScript { out, batch, patients, cases } => {
            sql::pgbench_script(&settings, &out, &Load::new(patients, cases), batch).await
        }
        Command::OhaSummary { file } => http::oha_summary(&file),
        Command::Settings => {
            println!(
                "worker_concurrency={} worker_prefetch={} worker_batch_size={} publish_channels={} \
                 db_max_connections={}",
                settings.worker.concurrency,
                settings.worker.prefetch,
                settings.worker.batch_size,
                settings.gateway.publish_channels,
                settings.database.max_connections
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("scanhook-bench: {message}");
    ExitCode::FAILURE
}

/// Most cases the patient numbering (six digits) allows.
pub const MAX_CASES: usize = 1_000_000;

/// Patient `k` of the bench: `bench-000042`; its case is `BENCH-000042`.
pub fn patient_id(k: usize) -> String {
    format!("bench-{k:06}")
}

pub fn case_number(k: usize) -> String {
    format!("BENCH-{k:06}")
}

/// Which patients the load uses: `patients` of them, spread evenly over `cases` cases, so that
/// with a million cases the load touches the whole index and not one corner of it.
pub struct Load {
    pub patients: usize,
    pub cases: usize,
}

impl Load {
    pub fn new(patients: usize, cases: usize) -> Self {
        Self { patients: patients.max(1), cases: cases.max(patients).max(1) }
    }

    /// The patient numbers, in load order.
    pub fn patient_numbers(&self) -> impl Iterator<Item = usize> + use<> {
        let stride = self.cases / self.patients;
        (0..self.patients).map(move |i| i * stride)
    }
}

/// A scanner's body, about the size of a real notification.
pub fn body(scan_id: u64) -> String {
    format!(
        r#"{{"scan_id":{scan_id},"device":"bench-scanner-01","kind":"intraoral","captured_at":"2025-07-14T09:21:07Z"}}"#
    )
}

/// The signer name the gateway records for the first configured secret, and that secret.
pub fn signer(settings: &Settings) -> Result<(String, String), String> {
    let entries = settings.webhook_secrets();
    let first = entries.first().ok_or("SCANHOOK__WEBHOOK__SECRET is not set")?;
    let (name, secret) = scanhook_gateway::signature::split_entry(first.expose());
    Ok((name.map_or_else(|| "secret-1".to_owned(), str::to_owned), secret.to_owned()))
}

/// The event the gateway would publish for this request.
pub fn event(k: usize, case_id: i64, scan_id: u64, signer: &str) -> Result<ScanEvent, String> {
    Ok(ScanEvent {
        event_id: Uuid::now_v7(),
        patient_id: patient_id(k),
        case_id,
        case_number: case_number(k),
        scan_id: i64::try_from(scan_id).map_err(|e| e.to_string())?,
        payload: RawValue::from_string(body(scan_id)).map_err(|e| e.to_string())?,
        received_at: chrono::Utc::now(),
        signer: Some(signer.to_owned()),
    })
}

/// A small deterministic generator for scan ids (no randomness crate in the workspace).
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A scan id in 1 ..= 2^40.
    pub fn scan_id(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 24) + 1
    }
}
