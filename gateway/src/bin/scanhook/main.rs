//! `scanhook`: the operator's and integrator's command line.

mod seed;
mod send;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use scanhook_gateway::signature::{sign, sign_standard, split_entry};
use scanhook_shared::broker::{self, Publisher};
use scanhook_shared::config::millis;
use scanhook_shared::dead_letters::{DeadLetter, DeadLetters, Selection};
use scanhook_shared::{Needs, Settings, Topology};

#[derive(Parser)]
#[command(name = "scanhook", version, about = "Operate scanhook and check webhook integrations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the X-Webhook-Signature value of a body under a secret, or with --webhook-id the
    /// three Standard Webhooks headers.
    Sign {
        /// The exact request body.
        #[arg(long)]
        body: String,
        #[command(flatten)]
        key: SigningKey,
        /// Sign the Standard Webhooks way, with this webhook-id.
        #[arg(long)]
        webhook_id: Option<String>,
        /// The webhook-timestamp, in Unix seconds (default: now).
        #[arg(long, requires = "webhook_id")]
        timestamp: Option<i64>,
    },
    /// Post one signed scan notification to a gateway and print its answer; exits 0 on 202.
    Send {
        /// The gateway's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The patient, the last segment of the path.
        #[arg(long)]
        patient: String,
        /// The exact request body.
        #[arg(long, default_value = r#"{"scan_id":1}"#)]
        body: String,
        #[command(flatten)]
        key: SigningKey,
        /// Sent as Idempotency-Key: resending with the same key is the same event.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Sent as X-Request-Id, to find the request in the logs.
        #[arg(long)]
        request_id: Option<String>,
        /// Sign the Standard Webhooks way, with this webhook-id.
        #[arg(long)]
        webhook_id: Option<String>,
    },
    /// Create demo patients with active cases (uses SCANHOOK__DATABASE__URL).
    Seed {
        /// How many patients.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Patients are <prefix>-000001, ...; their cases <PREFIX>-000001, ...
        #[arg(long, default_value = "demo")]
        prefix: String,
    },
    /// Inspect and act on dead-lettered events (uses SCANHOOK__AMQP__URL and amqp.queue).
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
}

/// Which secret signs: given, or taken from the configuration.
#[derive(Args)]
struct SigningKey {
    /// The shared secret (default: from SCANHOOK__WEBHOOK__SECRET, the first entry or the one
    /// named by --signer).
    #[arg(long, env = "SCANHOOK_SIGN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The name of the SCANHOOK__WEBHOOK__SECRET entry to sign with.
    #[arg(long, conflicts_with = "secret")]
    signer: Option<String>,
}

impl SigningKey {
    fn resolve(self) -> Result<String, String> {
        self.secret.map_or_else(|| configured_secret(self.signer.as_deref()), Ok)
    }
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// One line per dead letter: event id, attempts, when and why.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Everything about one dead-lettered event: headers and body.
    Show { event_id: String },
    /// Send dead letters back to the work queue, retry count reset.
    Replay(Which),
    /// Delete dead letters for good.
    Purge(Which),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// Only these events.
    #[arg(long = "event-id", value_name = "EVENT_ID")]
    event_ids: Vec<String>,
}

impl Which {
    fn selection(self) -> Selection {
        if self.all { Selection::All } else { Selection::Events(self.event_ids) }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sign { body, key, webhook_id, timestamp } => {
            print_signature(&body, key, webhook_id.as_deref(), timestamp)
        }
        Command::Send { url, patient, body, key, idempotency_key, request_id, webhook_id } => {
            let notification = |secret| send::Notification {
                url,
                patient_id: patient,
                body,
                secret,
                idempotency_key,
                request_id,
                webhook_id,
            };
            let sent = match key.resolve() {
                Ok(secret) => send_notification(notification(secret)).await,
                Err(err) => Err(err),
            };
            match sent {
                Ok(true) => return ExitCode::SUCCESS,
                Ok(false) => return ExitCode::FAILURE,
                Err(err) => Err(err),
            }
        }
        Command::Seed { count, prefix } => seed_cases(count, &prefix).await,
        Command::DeadLetters(command) => dead_letters(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("scanhook: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_signature(
    body: &str,
    key: SigningKey,
    webhook_id: Option<&str>,
    timestamp: Option<i64>,
) -> Result<(), String> {
    let secret = key.resolve()?;
    let Some(id) = webhook_id else {
        println!("{}", sign(&secret, body.as_bytes()));
        return Ok(());
    };
    let timestamp = timestamp.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let signature = sign_standard(&secret, id, timestamp, body.as_bytes())
        .ok_or("the secret starts with whsec_ but the rest is not base64")?;
    println!("webhook-id: {id}\nwebhook-timestamp: {timestamp}\nwebhook-signature: {signature}");
    Ok(())
}

/// Sends and prints the answer; `true` for a 202.
async fn send_notification(notification: send::Notification) -> Result<bool, String> {
    let answer = send::send(&notification).await?;
    println!("{}", answer.render());
    Ok(answer.status == 202)
}

async fn seed_cases(count: u32, prefix: &str) -> Result<(), String> {
    let settings = Settings::load().map_err(|e| e.to_string())?;
    settings.require(&[Needs::Database]).map_err(|e| e.to_string())?;
    let pairs = seed::seed(&settings, prefix, count).await?;
    const SHOWN: usize = 10;
    for (patient, case) in pairs.iter().take(SHOWN) {
        println!("{patient}  {case}  active");
    }
    if pairs.len() > SHOWN {
        println!("...");
    }
    println!("{} patients with an active case", pairs.len());
    Ok(())
}

/// The secret of the entry named `signer`, or of the first entry, from the configuration.
fn configured_secret(signer: Option<&str>) -> Result<String, String> {
    let settings = Settings::load().map_err(|e| e.to_string())?;
    settings.require(&[Needs::WebhookSecret]).map_err(|e| e.to_string())?;
    let entries = settings.webhook_secrets();
    let mut parsed = entries.iter().map(|entry| split_entry(entry.expose()));
    let found = match signer {
        None => parsed.next(),
        Some(wanted) => parsed.find(|(name, _)| *name == Some(wanted)),
    };
    found.map(|(_, secret)| secret.to_owned()).ok_or_else(|| {
        format!("no secret named {:?} in SCANHOOK__WEBHOOK__SECRET", signer.unwrap_or(""))
    })
}

async fn dead_letters(command: DeadLetterCommand) -> Result<(), String> {
    let settings = Settings::load().map_err(|e| e.to_string())?;
    settings.require(&[Needs::Broker]).map_err(|e| e.to_string())?;
    let topology = Topology::new(&settings.amqp.queue, &settings.retry_delays());
    let connection = broker::connect(&settings.amqp.url, "scanhook-cli")
        .await
        .map_err(|e| format!("cannot reach the broker: {e}"))?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let queues = DeadLetters::new(&channel, &topology);
    let publisher = || {
        Publisher::new(
            &settings.amqp.url,
            "scanhook-cli",
            1,
            millis(settings.amqp.confirm_timeout_ms),
        )
        .map_err(|e| e.to_string())
    };

    let outcome = match command {
        DeadLetterCommand::List { limit } => {
            let total = queues.count().await.map_err(|e| e.to_string())?;
            let letters = queues.list(limit).await.map_err(|e| e.to_string())?;
            for letter in &letters {
                println!("{}", summary(letter));
            }
            println!("{} shown, {total} dead-lettered", letters.len());
            Ok(())
        }
        DeadLetterCommand::Show { event_id } => {
            let total = queues.count().await.map_err(|e| e.to_string())? as usize;
            let letters = queues.list(total).await.map_err(|e| e.to_string())?;
            match letters.iter().find(|letter| letter.is(&event_id)) {
                Some(letter) => {
                    println!("{}", details(letter));
                    Ok(())
                }
                None => Err(format!("no dead letter with event id {event_id}")),
            }
        }
        DeadLetterCommand::Replay(which) => {
            let publisher = publisher()?;
            let replayed = queues.replay(&which.selection(), &publisher).await;
            replayed
                .map(|n| println!("{n} replayed to {}", topology.work))
                .map_err(|e| e.to_string())
        }
        DeadLetterCommand::Purge(which) => {
            let purged = queues.purge(&which.selection()).await;
            purged.map(|n| println!("{n} purged")).map_err(|e| e.to_string())
        }
    };
    let _ = connection.close(200, "done".into()).await;
    outcome
}

fn summary(letter: &DeadLetter) -> String {
    format!(
        "{}  attempts={}  failed_at={}  reason={}",
        letter.message_id.as_deref().unwrap_or("-"),
        letter.attempts.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        letter.failed_at.as_deref().unwrap_or("-"),
        letter.reason.as_deref().or(letter.broker_reason.as_deref()).unwrap_or("-"),
    )
}

fn details(letter: &DeadLetter) -> String {
    let body = serde_json::from_slice::<serde_json::Value>(&letter.body)
        .ok()
        .and_then(|json| serde_json::to_string_pretty(&json).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&letter.body).into_owned());
    let headers: Vec<String> = letter
        .properties
        .headers()
        .as_ref()
        .map(|table| {
            table.inner().iter().map(|(k, v)| format!("  {}: {v:?}", k.as_str())).collect()
        })
        .unwrap_or_default();
    format!("{}\nheaders:\n{}\nbody:\n{body}", summary(letter), headers.join("\n"))
}
