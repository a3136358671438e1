//! Fault injection: processes killed with SIGKILL, RabbitMQ and PostgreSQL stopped and started,
//! poison messages and replays. Every test counts each 202 and ends by checking that exactly the
//! accepted events were applied, none twice, and that no message is left in any queue.
//!
//! These stop the services the other tests share, so `scripts/test.sh` runs them one at a time,
//! after the parallel tests; each has its own database and its own RabbitMQ vhost.

mod common;

/// Test paths start with `faults::`, so that a plain `cargo test` run can leave them out.
mod faults {

    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use super::common::load::{Load, LoadReport};
    use super::common::services::{self, WorkerProcess};
    use super::common::*;

    /// The figures each test reports, in one line that a person or a script can read.
    struct Figures {
        test: &'static str,
        events: usize,
        accepted: usize,
        applied: usize,
        duplicates: i64,
        dead_lettered: u32,
        unavailable: usize,
        recovery: Option<Duration>,
    }

    impl Figures {
        fn print(&self) {
            println!(
                "figures test={} events={} accepted_202={} applied={} duplicates={} dead_lettered={} \
                 answered_503={} recovery_ms={}",
                self.test,
                self.events,
                self.accepted,
                self.applied,
                self.duplicates,
                self.dead_lettered,
                self.unavailable,
                self.recovery.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string()),
            );
        }
    }

    async fn isolated() -> TestEnv {
        TestEnv::isolated(|s| {
            s.worker.retry_delays_ms = vec![500, 1000, 2000, 4000, 8000, 16000];
            s.database.max_connections = 8;
        })
        .await
    }

    /// `n` patients, each with an active case.
    async fn patients(env: &TestEnv, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("patient-{i}");
            env.insert_case(&id, &format!("CASE-{i}")).await;
            ids.push(id);
        }
        ids
    }

    fn load(gateway: &Running, patients: Vec<String>) -> Load {
        Load {
            gateway: gateway.addr.expect("gateway"),
            patients,
            connections: 16,
            patience: Duration::from_secs(60),
        }
    }

    async fn backlog(env: &TestEnv, events: usize) -> LoadReport {
        let gateway = env.spawn_gateway().await;
        let report = load(&gateway, patients(env, 200).await).events(events).await;
        gateway.stop().await;
        assert!(
            report.unexpected.is_empty(),
            "{:?}",
            &report.unexpected[..report.unexpected.len().min(5)]
        );
        assert_eq!(report.accepted.len(), events, "every event of the backlog is accepted");
        report
    }

    async fn applied(env: &TestEnv) -> i64 {
        env.count("SELECT count(*) FROM activity_logs").await
    }

    async fn wait_applied_at_least(env: &TestEnv, n: i64) {
        eventually(Duration::from_secs(120), || async { (applied(env).await >= n).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("fewer than {n} events applied in 120 s"));
    }

    /// Waits until every accepted event is applied and nothing waits in the work or retry
    /// queues, then compares what was applied with what was accepted: returns the number applied
    /// and the number of duplicate rows.
    async fn settle(env: &TestEnv, accepted: &HashSet<Uuid>) -> (usize, i64) {
        let drained = eventually(Duration::from_secs(180), || async {
            let applied = applied(env).await as usize;
            let waiting = waiting(env).await;
            (waiting == 0 && applied >= accepted.len()).then_some(())
        })
        .await;
        assert!(drained.is_some(), "the queues did not drain: {:?}", env.queue_depths().await);

        let rows = env.count("SELECT count(*) FROM activity_logs").await;
        let distinct = env.count("SELECT count(DISTINCT event_id) FROM activity_logs").await;
        let applied_ids = applied_event_ids(env).await;
        assert_eq!(accepted.difference(&applied_ids).count(), 0, "accepted events not applied");
        assert_eq!(applied_ids.difference(accepted).count(), 0, "applied events never accepted");
        (applied_ids.len(), rows - distinct)
    }

    /// Messages ready in the work and retry queues.
    async fn waiting(env: &TestEnv) -> u32 {
        let depths = env.queue_depths().await;
        depths.iter().filter(|(name, _)| *name != env.topology.dead).map(|(_, n)| n).sum()
    }

    /// Once every worker has exited, a message still unacknowledged would be ready again:
    /// checks that none is, and returns the number of dead letters.
    async fn nothing_left(env: &TestEnv) -> u32 {
        assert_eq!(waiting(env).await, 0, "messages left behind: {:?}", env.queue_depths().await);
        dead_letters(env).await
    }

    async fn applied_event_ids(env: &TestEnv) -> HashSet<Uuid> {
        use scanhook_shared::entities::activity_logs;
        use sea_orm::{EntityTrait, QuerySelect};
        activity_logs::Entity::find()
            .select_only()
            .column(activity_logs::Column::EventId)
            .into_tuple::<Uuid>()
            .all(&env.db)
            .await
            .expect("event ids")
            .into_iter()
            .collect()
    }

    /// What a test did, for `conclude` to check and report.
    struct Run<'a> {
        test: &'static str,
        events: usize,
        accepted: &'a HashSet<Uuid>,
        unavailable: usize,
        recovery: Option<Duration>,
    }

    impl<'a> Run<'a> {
        fn of(test: &'static str, report: &'a LoadReport, recovery: Option<Duration>) -> Self {
            Self {
                test,
                events: report.events,
                accepted: &report.accepted,
                unavailable: report.unavailable,
                recovery,
            }
        }
    }

    /// Waits until every accepted event is applied, stops the workers, checks that nothing is
    /// left in the work and retry queues, then prints and checks the figures; returns the number
    /// of dead letters.
    async fn conclude(env: &TestEnv, run: Run<'_>, workers: Vec<WorkerProcess>) -> u32 {
        let (applied, duplicates) = settle(env, run.accepted).await;
        for worker in workers {
            worker.terminate().await;
        }
        let dead_lettered = nothing_left(env).await;
        check(&Figures {
            test: run.test,
            events: run.events,
            accepted: run.accepted.len(),
            applied,
            duplicates,
            dead_lettered,
            unavailable: run.unavailable,
            recovery: run.recovery,
        });
        dead_lettered
    }

    fn check(figures: &Figures) {
        figures.print();
        assert_eq!(figures.applied, figures.accepted, "applied == accepted");
        assert_eq!(figures.duplicates, 0, "no event applied twice");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_killed_mid_backlog_loses_and_doubles_nothing() {
        let env = isolated().await;
        let report = backlog(&env, 5000).await;

        let worker = WorkerProcess::start(&env.settings, "faults-kill-a");
        wait_applied_at_least(&env, 1500).await;
        worker.kill_9().await;
        let at_kill = applied(&env).await;
        let restarted = Instant::now();
        let worker = WorkerProcess::start(&env.settings, "faults-kill-b");
        wait_applied_at_least(&env, at_kill + 1).await;
        let recovery = restarted.elapsed();

        let run = Run::of("worker_kill_9", &report, Some(recovery));
        let dead_lettered = conclude(&env, run, vec![worker]).await;
        assert!(at_kill < 5000, "the kill happened mid-backlog ({at_kill} applied)");
        assert_eq!(dead_lettered, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_workers_with_one_killed_twice_lose_and_double_nothing() {
        let env = isolated().await;
        let report = backlog(&env, 5000).await;

        let steady = WorkerProcess::start(&env.settings, "faults-two-steady");
        let mut victim = WorkerProcess::start(&env.settings, "faults-two-victim-0");
        for (round, threshold) in [1000, 2500].into_iter().enumerate() {
            wait_applied_at_least(&env, threshold).await;
            victim.kill_9().await;
            victim =
                WorkerProcess::start(&env.settings, &format!("faults-two-victim-{}", round + 1));
        }

        let run = Run::of("two_workers_one_killed_twice", &report, None);
        let dead_lettered = conclude(&env, run, vec![victim, steady]).await;
        assert_eq!(dead_lettered, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_restarted_under_load_gives_503s_then_recovers() {
        let env = isolated().await;
        let gateway = env.spawn_gateway().await;
        let worker = WorkerProcess::start(&env.settings, "faults-broker");
        let load = load(&gateway, patients(&env, 200).await);
        let (stop_load, stop) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { load.until(stop).await });

        tokio::time::sleep(Duration::from_secs(2)).await;
        services::stop_broker().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let restarted = Instant::now();
        services::start_broker().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop_load.send(true).expect("stop the load");
        let report = running.await.expect("load");

        let recovery = report.first_accepted_after(restarted).map(|at| at - restarted);
        assert!(
            report.unexpected.is_empty(),
            "{:?}",
            &report.unexpected[..report.unexpected.len().min(5)]
        );
        assert!(report.unavailable > 0, "requests during the outage are answered 503");
        assert!(recovery.is_some(), "the gateway accepts again after the restart");
        assert_eq!(report.accepted.len(), report.events, "every event is accepted in the end");

        gateway.stop().await;
        let run = Run::of("rabbitmq_restart_under_load", &report, recovery);
        let dead_lettered = conclude(&env, run, vec![worker]).await;
        assert_eq!(dead_lettered, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgresql_restarted_while_draining_loses_and_doubles_nothing() {
        let env = isolated().await;
        let report = backlog(&env, 5000).await;
        let worker = WorkerProcess::start(&env.settings, "faults-postgres");
        wait_applied_at_least(&env, 500).await;

        services::stop_database().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Rows are stamped with their transaction's start, so any stamped from now on were
        // committed after the database came back.
        let down_until = chrono::Utc::now();
        services::start_database().await;
        let restarted = Instant::now();
        let since_restart = format!(
            "SELECT count(*) FROM activity_logs WHERE created_at >= '{}'",
            down_until.to_rfc3339()
        );
        eventually(Duration::from_secs(120), || async {
            env.db.ping().await.ok()?;
            (env.count(&since_restart).await > 0).then_some(())
        })
        .await
        .expect("events applied after the database came back");
        let recovery = restarted.elapsed();

        let run = Run::of("postgresql_restart_while_draining", &report, Some(recovery));
        let dead_lettered = conclude(&env, run, vec![worker]).await;
        assert_eq!(dead_lettered, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poison_and_orphaned_events_are_dead_lettered_and_the_rest_applied() {
        let env = isolated().await;
        let report = backlog(&env, 1000).await;
        let closing = env.insert_case("closing", "CASE-CLOSING").await;
        let gateway = env.spawn_gateway().await;
        let orphan = Post::signed("closing", r#"{"scan_id":1}"#).send(&gateway).await;
        orphan.assert(202, true, "Scan update processed successfully");
        gateway.stop().await;
        env.exec(&format!("UPDATE cases SET status = 'closed' WHERE id = {closing}")).await;
        let poison = Uuid::now_v7();
        env.publish_raw(b"\x00\x01 not an event", properties_for(poison)).await;

        let worker = WorkerProcess::start(&env.settings, "faults-poison");
        let run = Run {
            events: report.events + 2,
            unavailable: 0,
            ..Run::of("poison_and_orphaned_events", &report, None)
        };
        let dead_lettered = conclude(&env, run, vec![worker]).await;
        assert_eq!(dead_lettered, 2);

        let listing = cli(&env, &["dead-letters", "list"]).await;
        let line_of =
            |id: Uuid| listing.lines().find(|l| l.starts_with(&id.to_string())).map(str::to_owned);
        let orphan_line = line_of(orphan.event_id()).expect("the orphaned event is listed");
        assert!(orphan_line.contains("no longer active"), "{orphan_line}");
        let poison_line = line_of(poison).expect("the poison message is listed");
        assert!(poison_line.contains("undecodable event"), "{poison_line}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replayed_dead_letter_is_applied_once_after_the_fix() {
        let env = isolated().await;
        let case_id = env.insert_case("605914", "CASE-1").await;
        let gateway = env.spawn_gateway().await;
        let reply = Post::signed("605914", r#"{"scan_id":9}"#).send(&gateway).await;
        reply.assert(202, true, "Scan update processed successfully");
        let event_id = reply.event_id();
        env.exec(&format!("UPDATE cases SET status = 'on_hold' WHERE id = {case_id}")).await;
        let worker = WorkerProcess::start(&env.settings, "faults-replay");
        let parked = eventually(Duration::from_secs(15), || async {
            (dead_letters(&env).await == 1).then_some(())
        })
        .await;
        assert!(parked.is_some(), "dead-lettered while the case is on hold");

        // The cause is fixed: the case is active again. Replaying twice must still apply once.
        env.exec(&format!("UPDATE cases SET status = 'active' WHERE id = {case_id}")).await;
        let shown = cli(&env, &["dead-letters", "show", &event_id.to_string()]).await;
        assert!(shown.contains(r#""scan_id": 9"#), "{shown}");
        let replayed =
            cli(&env, &["dead-letters", "replay", "--event-id", &event_id.to_string()]).await;
        assert!(replayed.starts_with("1 replayed"), "{replayed}");
        wait_applied(&env, event_id, Duration::from_secs(15)).await;
        let again = cli(&env, &["dead-letters", "replay", "--all"]).await;
        assert!(again.starts_with("0 replayed"), "{again}");

        gateway.stop().await;
        let accepted = HashSet::from([event_id]);
        let run = Run {
            test: "replay_after_fix",
            events: 1,
            accepted: &accepted,
            unavailable: 0,
            recovery: None,
        };
        let dead_lettered = conclude(&env, run, vec![worker]).await;
        if dead_lettered > 0 {
            println!(
                "left in the dead-letter queue:\n{}",
                cli(&env, &["dead-letters", "list"]).await
            );
        }
        assert_eq!(dead_lettered, 0);
        let on_case = env
            .count(&format!(
                "SELECT count(*) FROM cases WHERE id = {case_id} AND latest_scan_id = 9"
            ))
            .await;
        assert_eq!(on_case, 1);
    }

    async fn dead_letters(env: &TestEnv) -> u32 {
        let depths = env.queue_depths().await;
        depths.into_iter().find(|(name, _)| *name == env.topology.dead).map_or(0, |(_, n)| n)
    }

    /// Runs the `scanhook` command against this test's broker and returns what it printed.
    async fn cli(env: &TestEnv, args: &[&str]) -> String {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_scanhook"))
            .args(args)
            .env_clear()
            .env("SCANHOOK__AMQP__URL", env.settings.amqp.url.expose())
            .env("SCANHOOK__AMQP__QUEUE", &env.settings.amqp.queue)
            .env("SCANHOOK__WORKER__RETRY_DELAYS_MS", "500,1000,2000,4000,8000,16000")
            .output()
            .await
            .expect("run scanhook");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "scanhook {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// The readiness of an admin listener: its status and which dependencies it found.
    async fn readiness(admin: std::net::SocketAddr) -> (u16, serde_json::Value) {
        let (status, body) = get(admin, "/readyz").await;
        (status.as_u16(), serde_json::from_str(&body).expect("an envelope"))
    }

    /// Waits until both admin listeners answer `want` to /readyz; how long that took.
    async fn both_ready(admins: [std::net::SocketAddr; 2], want: u16, missing: &str) -> Duration {
        let started = Instant::now();
        let reached = eventually(Duration::from_secs(60), || async move {
            for admin in admins {
                let (status, envelope) = readiness(admin).await;
                if status != want {
                    return None;
                }
                if want == 503 && envelope["data"][missing] != serde_json::Value::Bool(false) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        assert!(reached.is_some(), "/readyz never answered {want} (waiting for {missing})");
        started.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_follows_postgresql_and_rabbitmq_stopped_and_started() {
        use scanhook_shared::admin;

        let env = isolated().await;
        let recorder = scanhook_shared::metrics::recorder();
        let app = std::sync::Arc::new(
            scanhook_gateway::App::connect(&env.settings).await.expect("gateway connects"),
        );
        let worker = scanhook_worker::Worker::connect(&env.settings).await.expect("worker");
        let mut admins = Vec::new();
        for status in [app.status(), worker.status()] {
            let listener = admin::bind("127.0.0.1:0").await.expect("bind").expect("a listener");
            admins.push(listener.local_addr().expect("address"));
            tokio::spawn(admin::serve(listener, recorder.clone(), status, std::future::pending()));
        }
        let admins = [admins[0], admins[1]];
        let settings = env.settings.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let consuming = tokio::spawn(async move {
            worker
                .run(&settings, async {
                    let _ = stopped.await;
                })
                .await;
        });
        both_ready(admins, 200, "").await;

        services::stop_database().await;
        let database_unready = both_ready(admins, 503, "database").await;
        services::start_database().await;
        let database_ready = both_ready(admins, 200, "").await;

        services::stop_broker().await;
        let broker_unready = both_ready(admins, 503, "broker").await;
        services::start_broker().await;
        let broker_ready = both_ready(admins, 200, "").await;

        println!(
            "figures test=readiness database_unready_ms={} database_ready_again_ms={} \
             broker_unready_ms={} broker_ready_again_ms={}",
            database_unready.as_millis(),
            database_ready.as_millis(),
            broker_unready.as_millis(),
            broker_ready.as_millis(),
        );
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), consuming).await;
    }
}
