//! The worker binary refuses to start without what it needs, and says what is missing.

use std::process::Command;

fn worker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scanhook-worker"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SCANHOOK__") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn a_missing_database_url_stops_start_up_with_its_variable_named() {
    let output = worker()
        .env("SCANHOOK__AMQP__URL", "amqp://guest:pw@127.0.0.1:5672/%2f")
        .output()
        .expect("the worker binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SCANHOOK__DATABASE__URL"), "{stderr}");
    assert!(!stderr.contains("pw@"), "credentials leaked: {stderr}");
}

#[test]
fn a_missing_broker_url_stops_start_up_with_its_variable_named() {
    let output = worker()
        .env("SCANHOOK__DATABASE__URL", "postgres://scanhook:pw@127.0.0.1/scanhook")
        .output()
        .expect("the worker binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SCANHOOK__AMQP__URL"), "{stderr}");
    assert!(!stderr.contains("pw@"), "credentials leaked: {stderr}");
}
