//! Many signed requests over many patients, as scanners send them: each event has its own
//! idempotency key and is sent again after a 503 until it is accepted, so that every event the
//! load meant to deliver ends with exactly one 202'd event id.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use uuid::Uuid;

use scanhook_gateway::signature::sign;

use super::{ROUTE, SECRET};

/// What the load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Distinct events the load tried to deliver.
    pub events: usize,
    /// Event ids answered 202 (a resent event answers with the same id).
    pub accepted: HashSet<Uuid>,
    /// 202 answers in all.
    pub accepted_answers: usize,
    pub unavailable: usize,
    /// Anything but 202 and 503, or a broken connection, with the time it happened.
    pub unexpected: Vec<String>,
    /// When each 202 and 503 came back.
    pub timeline: Vec<(Instant, u16)>,
}

impl LoadReport {
    /// The first 202 at or after `since`.
    pub fn first_accepted_after(&self, since: Instant) -> Option<Instant> {
        self.timeline.iter().filter(|(at, s)| *at >= since && *s == 202).map(|(at, _)| *at).min()
    }
}

pub struct Load {
    pub gateway: SocketAddr,
    pub patients: Vec<String>,
    pub connections: usize,
    /// How long one event is sent again after 503s before the load gives up on it.
    pub patience: Duration,
}

impl Load {
    /// Delivers events `0..count`, each until it is accepted.
    pub async fn events(&self, count: usize) -> LoadReport {
        let next = Arc::new(Mutex::new(0usize));
        self.run(move || {
            let mut next = next.lock().expect("counter");
            (*next < count).then(|| {
                *next += 1;
                *next - 1
            })
        })
        .await
    }

    /// Delivers events one after the other until `stop` turns true.
    pub async fn until(&self, stop: watch::Receiver<bool>) -> LoadReport {
        let next = Arc::new(Mutex::new(0usize));
        self.run(move || {
            if *stop.borrow() {
                return None;
            }
            let mut next = next.lock().expect("counter");
            *next += 1;
            Some(*next - 1)
        })
        .await
    }

    async fn run(&self, next: impl Fn() -> Option<usize> + Send + Sync + 'static) -> LoadReport {
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let next = Arc::new(next);
        let mut tasks = Vec::new();
        for _ in 0..self.connections {
            let (report, next) = (Arc::clone(&report), Arc::clone(&next));
            let (addr, patients, patience) = (self.gateway, self.patients.clone(), self.patience);
            tasks.push(tokio::spawn(async move {
                let mut client = Client::new(addr);
                while let Some(n) = next() {
                    deliver(&mut client, &patients, n, patience, &report).await;
                }
            }));
        }
        for task in tasks {
            task.await.expect("load task");
        }
        Arc::try_unwrap(report).expect("tasks done").into_inner().expect("report")
    }
}

async fn deliver(
    client: &mut Client,
    patients: &[String],
    n: usize,
    patience: Duration,
    report: &Mutex<LoadReport>,
) {
    let patient = &patients[n % patients.len()];
    let body = format!(r#"{{"scan_id":{},"source":"load"}}"#, n + 1);
    let key = format!("load-{n}");
    report.lock().expect("report").events += 1;
    let give_up = Instant::now() + patience;
    loop {
        let outcome = client.post(patient, &body, &key).await;
        if record(report, n, outcome) || Instant::now() > give_up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Notes one answer; `true` once the event needs no more sending.
fn record(
    report: &Mutex<LoadReport>,
    n: usize,
    outcome: Result<(u16, Option<Uuid>), String>,
) -> bool {
    let now = Instant::now();
    let mut report = report.lock().expect("report");
    match outcome {
        Ok((202, Some(event_id))) => {
            report.timeline.push((now, 202));
            report.accepted_answers += 1;
            report.accepted.insert(event_id);
            true
        }
        Ok((503, _)) => {
            report.timeline.push((now, 503));
            report.unavailable += 1;
            false
        }
        Ok((status, _)) => {
            report.unexpected.push(format!("event {n}: status {status}"));
            true
        }
        Err(err) => {
            report.unexpected.push(format!("event {n}: {err}"));
            false
        }
    }
}

/// One keep-alive connection, opened again when it breaks.
struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn post(
        &mut self,
        patient: &str,
        body: &str,
        key: &str,
    ) -> Result<(u16, Option<Uuid>), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await.map_err(|e| e.to_string())?;
        let request = Request::post(format!("{ROUTE}/{patient}"))
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .header("x-webhook-signature", sign(SECRET, body.as_bytes()))
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => {
                self.sender = None;
                return Err(err.to_string());
            }
        };
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let envelope: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let event_id = envelope["data"]["event_id"].as_str().and_then(|s| s.parse().ok());
        Ok((status, event_id))
    }
}
