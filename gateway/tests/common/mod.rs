//! The harness of the integration tests: a database and queue names of its own for each test,
//! the real gateway and worker on real sockets, and helpers to sign, post and wait.
//!
//! Services come from `SCANHOOK_TEST_DATABASE_URL` (a role that may create databases) and
//! `SCANHOOK_TEST_AMQP_URL`; `scripts/test.sh` sets both. Without them every test fails.

#![allow(dead_code)]

pub mod link;
pub mod load;
pub mod openapi;
pub mod raw;
pub mod services;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use uuid::Uuid;

use scanhook_gateway::App;
use scanhook_gateway::server::{ServerOptions, serve};
use scanhook_gateway::signature::sign;
use scanhook_migrations::{Migrator, MigratorTrait};
use scanhook_shared::{Settings, Topology};

use link::Link;

pub const SECRET: &str = "test-secret-5d1f0c";
pub const ROUTE: &str = "/v1/webhooks/scans";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the services")
    })
}

/// One test's world: its own database (migrated), its own queues, and the settings that
/// point the gateway and the worker at them.
pub struct TestEnv {
    pub settings: Settings,
    pub db: DatabaseConnection,
    pub topology: Topology,
    admin_url: String,
    db_name: String,
    pub vhost: Option<String>,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// Like `with`, and on a RabbitMQ vhost of its own, for tests that stop and start services.
    pub async fn isolated(adjust: impl FnOnce(&mut Settings)) -> Self {
        let amqp_url = required_env("SCANHOOK_TEST_AMQP_URL");
        let vhost = format!("scanhook_test_{}", Uuid::now_v7().simple());
        services::rabbitmqctl(&["add_vhost", &vhost]).await;
        let user = services::amqp_user(&amqp_url);
        services::rabbitmqctl(&["set_permissions", "-p", &vhost, &user, "'.*'", "'.*'", "'.*'"])
            .await;
        let url = services::with_vhost(&amqp_url, &vhost);
        let mut env = Self::with(|settings| {
            settings.amqp.url = scanhook_shared::Secret::new(url);
            adjust(settings);
        })
        .await;
        env.vhost = Some(vhost);
        env
    }

    /// Like `new`, with the settings adjusted before anything starts.
    pub async fn with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let admin_url = required_env("SCANHOOK_TEST_DATABASE_URL");
        let amqp_url = required_env("SCANHOOK_TEST_AMQP_URL");
        let db_name = format!("scanhook_test_{}", Uuid::now_v7().simple());

        let admin = Database::connect(&admin_url).await.expect("connect to the test PostgreSQL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{db_name}\""))
            .await
            .expect("create the test database");
        admin.close().await.ok();

        let db_url = with_database(&admin_url, &db_name);
        let queue = format!("test.{db_name}.scans");
        let mut settings = Settings::load_with(&[
            ("database.url", &db_url),
            ("amqp.url", &amqp_url),
            ("amqp.queue", &queue),
            ("webhook.secret", SECRET),
        ])
        .expect("test settings");
        settings.database.max_connections = 4;
        settings.database.acquire_timeout_ms = 1000;
        settings.database.connect_timeout_ms = 1000;
        settings.amqp.confirm_timeout_ms = 2000;
        settings.worker.retry_delays_ms = vec![200, 400, 800, 1600, 3200];
        settings.worker.shutdown_timeout_ms = 5000;
        settings.gateway.shutdown_timeout_ms = 5000;
        adjust(&mut settings);

        let db = Database::connect(&db_url).await.expect("connect to the test database");
        Migrator::up(&db, None).await.expect("migrations apply");
        let topology = Topology::new(&settings.amqp.queue, &settings.retry_delays());
        Self { settings, db, topology, admin_url, db_name, vhost: None }
    }

    /// The gateway on a free port of 127.0.0.1, with these settings.
    pub async fn spawn_gateway(&self) -> Running {
        spawn_gateway(self.settings.clone()).await
    }

    /// The worker, consuming this test's queue.
    pub fn spawn_worker(&self) -> Running {
        spawn_worker(self.settings.clone())
    }

    pub async fn insert_case(&self, patient_id: &str, case_number: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "INSERT INTO cases (case_number, patient_id) VALUES ($1, $2) RETURNING id",
                [case_number.into(), patient_id.into()],
            ))
            .await
            .expect("insert case")
            .expect("returned id");
        row.try_get_by_index::<i64>(0).expect("id")
    }

    pub async fn exec(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.expect(sql);
    }

    /// A number from a one-value query.
    pub async fn count(&self, sql: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql))
            .await
            .expect(sql)
            .expect("one row");
        row.try_get_by_index::<i64>(0).expect("a bigint")
    }

    /// A channel on this test's broker, for publishing or inspecting queues directly.
    pub async fn broker(&self) -> (Connection, Channel) {
        let connection =
            Connection::connect(self.settings.amqp.url.expose(), ConnectionProperties::default())
                .await
                .expect("connect to the test RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        self.topology.declare(&channel, self.settings.amqp.delivery_limit).await.expect("declare");
        (connection, channel)
    }

    /// Publishes raw bytes straight into the work queue, as a misbehaving producer might.
    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        let (connection, channel) = self.broker().await;
        self.publish_raw_on(&channel, body, properties).await;
        connection.close(200, "done".into()).await.ok();
    }

    /// [`Self::publish_raw`] on a channel of [`Self::broker`], for many messages in a row.
    pub async fn publish_raw_on(
        &self,
        channel: &Channel,
        body: &[u8],
        properties: BasicProperties,
    ) {
        channel
            .basic_publish(
                "".into(),
                self.topology.work.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    /// Ready messages in each of this test's queues, by name (as the queue leader counts them).
    pub async fn queue_depths(&self) -> Vec<(String, u32)> {
        let (connection, channel) = self.broker().await;
        let mut depths = Vec::new();
        for name in self.topology.queue_names() {
            let count = scanhook_shared::topology::message_count(&channel, name)
                .await
                .expect("passive declare");
            depths.push((name.to_owned(), count));
        }
        connection.close(200, "done".into()).await.ok();
        depths
    }

    /// Takes one message off the dead-letter queue, waiting for it up to `timeout`.
    pub async fn take_dead_letter(
        &self,
        timeout: Duration,
    ) -> Option<lapin::message::BasicGetMessage> {
        let (connection, channel) = self.broker().await;
        let deadline = Instant::now() + timeout;
        let found = loop {
            let got = channel
                .basic_get(self.topology.dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if got.is_some() || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        connection.close(200, "done".into()).await.ok();
        found
    }
}

impl Drop for TestEnv {
    /// Drops the database and deletes the queues, also when the test failed.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let db_name = self.db_name.clone();
        let amqp_url = self.settings.amqp.url.expose().to_owned();
        let queues: Vec<String> =
            self.topology.queue_names().into_iter().map(str::to_owned).collect();
        let db = self.db.clone();
        let vhost = self.vhost.clone();
        let cleanup = std::thread::spawn(move || {
            if let (Some(vhost), Ok(ctl)) = (vhost, std::env::var("SCANHOOK_TEST_RABBITMQCTL")) {
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("{ctl} delete_vhost {vhost}"))
                    .output();
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                db.close().await.ok();
                if let Ok(connection) =
                    Connection::connect(&amqp_url, ConnectionProperties::default()).await
                {
                    if let Ok(channel) = connection.create_channel().await {
                        for queue in &queues {
                            let _ = channel
                                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                    }
                    connection.close(200, "done".into()).await.ok();
                }
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
                        ))
                        .await;
                    admin.close().await.ok();
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The host:port of a service URL.
pub fn service_addr(url: &str) -> SocketAddr {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|_| panic!("a host:port in {url}"))
}

/// `url` with its host:port replaced by `addr` (credentials and path kept).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a scheme");
    let (authority, tail) = rest.find(['/', '?']).map_or((rest, ""), |i| rest.split_at(i));
    let credentials = authority.rsplit_once('@').map(|(c, _)| format!("{c}@")).unwrap_or_default();
    format!("{scheme}://{credentials}{addr}{tail}")
}

/// Routes a URL through a cuttable relay.
pub async fn relay(url: &str) -> (Link, String) {
    let link = Link::open(service_addr(url)).await;
    let relayed = via(url, link.addr);
    (link, relayed)
}

/// A gateway or worker running inside the test, stopped when dropped.
pub struct Running {
    pub addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr.expect("a listening process"), path)
    }

    /// Asks for a graceful stop and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn spawn_gateway(settings: Settings) -> Running {
    let app = Arc::new(App::connect(&settings).await.expect("gateway connects"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let options = ServerOptions::new(&settings.gateway);
    let task = tokio::spawn(async move {
        serve(listener, app, options, async {
            let _ = stopped.await;
        })
        .await;
    });
    Running { addr: Some(addr), stop: Some(stop), task }
}

pub fn spawn_worker(settings: Settings) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        scanhook_worker::run(&settings, async {
            let _ = stopped.await;
        })
        .await
        .expect("worker runs");
    });
    Running { addr: None, stop: Some(stop), task }
}

/// What came back from the gateway.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    /// Checks the status and the whole envelope but `data`.
    pub fn assert(&self, status: u16, ok: bool, message: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.body["status"], Value::Bool(ok), "{self:?}");
        assert_eq!(self.message(), message, "{self:?}");
        self
    }

    pub fn event_id(&self) -> Uuid {
        self.body["data"]["event_id"].as_str().and_then(|s| s.parse().ok()).expect("event_id")
    }
}

/// A request as a scanner would build it.
pub struct Post {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Post {
    /// A POST to the patient's route, signed with the test secret.
    pub fn signed(patient_id: &str, body: &str) -> Self {
        Self::unsigned(patient_id, body)
            .header("x-webhook-signature", &sign(SECRET, body.as_bytes()))
    }

    pub fn unsigned(patient_id: &str, body: &str) -> Self {
        Self {
            method: Method::POST,
            path: format!("{ROUTE}/{patient_id}"),
            body: body.as_bytes().to_vec(),
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }

    /// Sends it over a new connection and reads the answer.
    pub async fn send(self, gateway: &Running) -> Reply {
        send(gateway.addr.expect("gateway address"), self).await
    }
}

pub async fn send(addr: SocketAddr, post: Post) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);

    let mut request =
        Request::builder().method(post.method).uri(&post.path).header("host", addr.to_string());
    for (name, value) in &post.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(Bytes::from(post.body))).expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("an envelope, got {:?}", String::from_utf8_lossy(&bytes)));
    Reply { status, headers, body }
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Activity log rows of one event.
pub async fn activity_count(env: &TestEnv, event_id: Uuid) -> i64 {
    env.count(&format!("SELECT count(*) FROM activity_logs WHERE event_id = '{event_id}'")).await
}

/// Waits until the event's activity log appears, returning how long it took.
pub async fn wait_applied(env: &TestEnv, event_id: Uuid, timeout: Duration) -> Duration {
    let started = Instant::now();
    eventually(timeout, || async { (activity_count(env, event_id).await > 0).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("event {event_id} not applied within {timeout:?}"));
    started.elapsed()
}

pub fn properties_for(event_id: Uuid) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(event_id.to_string().into())
        .with_content_type("application/json".into())
        .with_headers(FieldTable::default())
}

/// `GET path` on `addr`: the status and the body as text (admin listeners).
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The sum of the samples of `name` in a Prometheus text exposition whose labels contain every
/// `label="value"` of `labels`; `None` when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(inner) => match inner.rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if !labels.iter().all(|wanted| label_part.split(',').any(|l| l == *wanted)) {
            continue;
        }
        if let Ok(value) = value.trim().parse::<f64>() {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}
