//! The `scanhook sign` command, run as a vendor would run it.

use std::process::{Command, Output};

use serde_json::Value;

const VECTORS: &str = include_str!("../testdata/signatures.json");
const STANDARD_VECTORS: &str = include_str!("../testdata/standard-webhooks.json");

fn scanhook(args: &[&str], secrets: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_scanhook"));
    command.args(args).env_remove("SCANHOOK_SIGN_SECRET");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SCANHOOK__") {
            command.env_remove(name);
        }
    }
    if let Some(secrets) = secrets {
        command.env("SCANHOOK__WEBHOOK__SECRET", secrets);
    }
    command.output().expect("the scanhook binary runs")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim_end().to_owned()
}

fn first(file: &str) -> Value {
    let all: Value = serde_json::from_str(file).expect("vector file");
    all["vectors"][0].clone()
}

#[test]
fn sign_prints_the_header_an_independent_signer_gives() {
    let v = first(VECTORS);
    let (body, secret) =
        (v["body_utf8"].as_str().expect("body"), v["secret"].as_str().expect("secret"));
    let output = scanhook(&["sign", "--body", body, "--secret", secret], None);
    assert_eq!(stdout(&output), v["signature"].as_str().expect("signature"));
}

#[test]
fn sign_takes_a_named_secret_from_the_configuration() {
    let v = first(VECTORS);
    let (body, secret) =
        (v["body_utf8"].as_str().expect("body"), v["secret"].as_str().expect("secret"));
    let secrets = format!("old:not-this-one,acme:{secret}");
    let output = scanhook(&["sign", "--body", body, "--signer", "acme"], Some(&secrets));
    assert_eq!(stdout(&output), v["signature"].as_str().expect("signature"));

    let output = scanhook(&["sign", "--body", body, "--signer", "nobody"], Some(&secrets));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no secret named \"nobody\""), "{stderr}");
    assert!(
        !stderr.contains(secret) && !stderr.contains("not-this-one"),
        "secret leaked: {stderr}"
    );
}

#[test]
fn sign_with_a_webhook_id_prints_the_standard_webhooks_headers() {
    let v = first(STANDARD_VECTORS);
    let timestamp = v["webhook_timestamp"].to_string();
    let id = v["webhook_id"].as_str().expect("id");
    let output = scanhook(
        &[
            "sign",
            "--body",
            v["body_utf8"].as_str().expect("body"),
            "--secret",
            v["secret"].as_str().expect("secret"),
            "--webhook-id",
            id,
            "--timestamp",
            &timestamp,
        ],
        None,
    );
    let expected = format!(
        "webhook-id: {id}\nwebhook-timestamp: {timestamp}\nwebhook-signature: {}",
        v["signature"].as_str().expect("signature")
    );
    assert_eq!(stdout(&output), expected);
}

#[test]
fn sign_without_any_secret_says_which_variable_to_set() {
    let output = scanhook(&["sign", "--body", "{}"], None);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SCANHOOK__WEBHOOK__SECRET"), "{stderr}");
}
