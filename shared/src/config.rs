//! Settings of every binary: `config/default.toml`, compiled in, under `SCANHOOK__*` variables.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../../config/default.toml");

/// A value that must not reach a log: `Debug` and `Display` print a placeholder.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("{key} is required (environment variable {env})")]
    Missing { key: &'static str, env: &'static str },
    #[error("{key} is invalid: {reason}")]
    Bad { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub gateway: GatewaySettings,
    pub webhook: WebhookSettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub query_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: Secret,
    pub queue: String,
    pub delivery_limit: u32,
    pub confirm_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    pub admin_listen: String,
    pub max_body_bytes: usize,
    pub retry_after_secs: u32,
    pub publish_channels: usize,
    pub case_cache_capacity: usize,
    pub case_cache_ttl_ms: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_in_flight: usize,
    pub allow_cidrs: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// One secret, or several separated by commas, each `secret` or `name:secret`.
    pub secret: Secret,
    /// Largest gap between a Standard Webhooks timestamp and the gateway's clock.
    pub timestamp_tolerance_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub admin_listen: String,
    pub prefetch: u16,
    pub concurrency: usize,
    pub batch_size: usize,
    pub batch_wait_ms: u64,
    pub retry_delays_ms: Vec<u64>,
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What a binary needs; [`Settings::require`] checks that it is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Database,
    Broker,
    WebhookSecret,
}

impl Settings {
    /// Defaults under the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_with(&[])
    }

    /// Defaults, then the environment, then `overrides` (dotted keys such as `amqp.queue`).
    pub fn load_with(overrides: &[(&str, &str)]) -> Result<Self, SettingsError> {
        let environment = Environment::with_prefix("SCANHOOK")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("worker.retry_delays_ms")
            .with_list_parse_key("gateway.allow_cidrs")
            .with_list_parse_key("gateway.trusted_proxies")
            .try_parsing(true);
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(environment);
        for (key, value) in overrides {
            builder = builder.set_override(*key, *value)?;
        }
        Ok(builder.build()?.try_deserialize()?)
    }

    /// Fails with the name of the first missing setting among those a binary needs.
    pub fn require(&self, needs: &[Needs]) -> Result<(), SettingsError> {
        for need in needs {
            let (value, key, env) = match need {
                Needs::Database => (&self.database.url, "database.url", "SCANHOOK__DATABASE__URL"),
                Needs::Broker => (&self.amqp.url, "amqp.url", "SCANHOOK__AMQP__URL"),
                Needs::WebhookSecret => {
                    (&self.webhook.secret, "webhook.secret", "SCANHOOK__WEBHOOK__SECRET")
                }
            };
            if value.is_empty() {
                return Err(SettingsError::Missing { key, env });
            }
        }
        if needs.contains(&Needs::WebhookSecret) && self.webhook_secrets().is_empty() {
            return Err(SettingsError::Bad {
                key: "webhook.secret",
                reason: "no non-empty secret in the list".into(),
            });
        }
        let counts = [
            ("worker.concurrency", self.worker.concurrency),
            ("worker.prefetch", usize::from(self.worker.prefetch)),
            ("worker.batch_size", self.worker.batch_size),
        ];
        if let Some((key, _)) = counts.into_iter().find(|(_, value)| *value == 0) {
            return Err(SettingsError::Bad { key, reason: "must be at least 1".into() });
        }
        Ok(())
    }

    /// The accepted webhook secrets, in configured order, blanks dropped.
    pub fn webhook_secrets(&self) -> Vec<Secret> {
        self.webhook
            .secret
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect()
    }

    pub fn retry_delays(&self) -> Vec<Duration> {
        self.worker.retry_delays_ms.iter().map(|ms| Duration::from_millis(*ms)).collect()
    }
}

pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_lack_the_secrets() {
        let settings =
            Settings::load_with(&[("database.url", ""), ("amqp.url", ""), ("webhook.secret", "")])
                .expect("defaults parse");
        assert_eq!(settings.gateway.listen.port(), 8080);
        assert_eq!(settings.gateway.max_body_bytes, 64 * 1024);
        let err = settings.require(&[Needs::Database]).expect_err("url missing");
        assert!(err.to_string().contains("SCANHOOK__DATABASE__URL"), "{err}");
    }

    #[test]
    fn secret_list_is_split_and_trimmed() {
        let settings = Settings::load_with(&[("webhook.secret", " old , new ,,")]).expect("parse");
        let secrets: Vec<_> =
            settings.webhook_secrets().iter().map(|s| s.expose().to_owned()).collect();
        assert_eq!(secrets, ["old", "new"]);
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let settings = Settings::load_with(&[
            ("webhook.secret", "hunter2"),
            ("database.url", "postgres://u:pw@h/db"),
        ])
        .expect("parse");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("pw@"));
    }
}
