//! Test harness: a fresh database per test, auth0-sim on port 0, the real app on port 0.

use std::{collections::HashMap, sync::Arc, time::Duration};

use auth0_exporter::{
    app::{Application, Role},
    config::Settings,
};
use auth0_sim::{Config as SimConfig, Sim};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WRITE_TOKEN: &str = "test-write-token";
pub const READ_TOKEN: &str = "test-read-token";

/// The server every test database is created on (`TEST_DATABASE_URL`, else the local cluster).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await.expect("TEST_DATABASE_URL reachable");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("url has a database");
    format!("{base}/{name}")
}

/// A small, fast simulated tenant; tests adjust what they exercise.
pub fn sim_config(users: u64) -> SimConfig {
    SimConfig {
        users,
        roles: 8,
        rate: 1000.0,
        burst: 1000,
        job_base: Duration::from_millis(300),
        job_per_user: Duration::ZERO,
        ..SimConfig::default()
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    pub sim: Arc<Sim>,
    pub database_url: String,
    stop: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

fn settings_for(database_url: &str, rate: f64) -> impl FnOnce(&Sim) -> Settings + '_ {
    move |sim| settings(sim, database_url, rate)
}

fn sha256_hex(token: &str) -> String {
    auth0_exporter::config::token_digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

/// Settings pointing at `sim` and `database_url`, with short queue timings for tests.
pub fn settings(sim: &Sim, database_url: &str, rate: f64) -> Settings {
    let vars: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", database_url.to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("AUTH0_BASE_URL", sim.base_url()),
        ("AUTH0_TENANT", "sim".into()),
        ("AUTH0_CLIENT_ID", "sim-client".into()),
        ("AUTH0_CLIENT_SECRET", "sim-secret".into()),
        ("AUTH0_RATE_LIMIT", rate.to_string()),
        // The reader's token is configured as its SHA-256, as a Secret would hold it.
        ("API_TOKENS", format!("writer:{WRITE_TOKEN}:read+write,reader:sha256:{}:read", sha256_hex(READ_TOKEN))),
    ]);
    let mut s = Settings::from_lookup(|k| vars.get(k).cloned()).expect("test settings");
    s.worker.poll_interval_ms = 100;
    s.worker.lease_secs = 3;
    s.worker.download_batch = 50;
    s.worker.enrich_batch = 25;
    s.worker.shutdown_grace_secs = 5;
    s.worker.drain_secs = 0;
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(sim_config(120), 500.0).await
}

pub async fn spawn_app_with(sim: SimConfig, rate: f64) -> TestApp {
    let sim = Arc::new(Sim::start(sim, "127.0.0.1:0".parse().unwrap()).await.expect("sim starts"));
    let database_url = fresh_database().await;
    spawn_replica(sim, &database_url, rate, Role::All).await
}

/// Another service instance (a replica) on the same database and sim.
pub async fn spawn_replica(sim: Arc<Sim>, database_url: &str, rate: f64, role: Role) -> TestApp {
    spawn_with_settings(sim, settings_for(database_url, rate), role).await
}

/// An instance with adjusted settings.
pub async fn spawn_with_settings(sim: Arc<Sim>, settings: impl FnOnce(&Sim) -> Settings, role: Role) -> TestApp {
    let settings = settings(&sim);
    if std::env::var("RUST_LOG").is_ok() {
        auth0_exporter::telemetry::init_logging(auth0_exporter::telemetry::DEFAULT_LOG);
    }
    let database_url = settings.database_url.as_ref().map(|u| u.expose_secret().to_owned()).unwrap();
    let app = Application::build(settings, role).await.expect("app builds");
    let base = app.local_addr().map(|a| format!("http://{a}")).unwrap_or_default();
    let pool = app.pool().clone();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run());
    TestApp { base, http: reqwest::Client::new(), pool, sim, database_url, stop, server: Some(server) }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.expect("request sent")
    }

    /// A GET that must succeed. Like any client of the contract it honours `503` + `Retry-After`
    /// (a pool briefly exhausted on a loaded machine), for a few seconds at most.
    pub async fn get_json(&self, path: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let resp = self.get(path, READ_TOKEN).await;
            if resp.status() == 503
                && resp.headers().contains_key("retry-after")
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(resp.status(), 200, "GET {path}");
            return resp.json().await.unwrap();
        }
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).bearer_auth(token).json(body).send().await.expect("request sent")
    }

    /// Creates an export and returns its id.
    pub async fn create_export(&self, body: Value) -> String {
        let resp = self.post("/v1/exports", WRITE_TOKEN, &body).await;
        assert_eq!(resp.status(), 202, "create export");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let export: Value = resp.json().await.unwrap();
        let id = export["id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/v1/exports/{id}"));
        id
    }

    /// Polls until the export reaches a final status; returns the export resource.
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            let export = self.get_json(&format!("/v1/exports/{id}")).await;
            if export["status"] == status {
                return export;
            }
            assert!(
                !["completed", "failed", "cancelled"].contains(&export["status"].as_str().unwrap()),
                "export ended {} instead of {status}: {export}",
                export["status"]
            );
            assert!(tokio::time::Instant::now() < deadline, "export stuck: {export}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `check` holds for the export resource.
    pub async fn wait_until(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let export = self.get_json(&format!("/v1/exports/{id}")).await;
            if check(&export) {
                return export;
            }
            assert!(tokio::time::Instant::now() < deadline, "never reached {what}: {export}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every profile of the export through the paginated API, checking order, duplicates and gaps.
    pub async fn all_profiles(&self, id: &str, query: &str, page: usize) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/exports/{id}/profiles?limit={page}{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let body = self.get_json(&path).await;
            let data = body["data"].as_array().unwrap();
            assert!(data.len() <= page);
            out.extend(data.iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(data.len(), page, "a page before the last is full");
                    cursor = Some(c.to_owned());
                }
                None => break,
            }
        }
        let ids: Vec<&str> = out.iter().map(|p| p["user_id"].as_str().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "profiles strictly ordered by user_id, no duplicates");
        out
    }

    /// Starts shutting down as SIGTERM would, without waiting.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Stops this instance as SIGTERM would and waits for it.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sim's ground truth restricted to what an export requested.
pub fn expected(truth: &[Value], enrich: &[&str]) -> Vec<Value> {
    truth
        .iter()
        .map(|t| {
            let mut t = t.clone();
            for key in ["roles", "authentication_methods", "authenticators", "enrollments"] {
                if !enrich.contains(&key) {
                    t.as_object_mut().unwrap().remove(key);
                }
            }
            t
        })
        .collect()
}

/// Field-for-field comparison with a readable failure.
pub fn assert_profiles_equal(served: &[Value], expected: &[Value]) {
    assert_eq!(served.len(), expected.len(), "profile count");
    for (s, e) in served.iter().zip(expected) {
        assert_eq!(s, e, "profile {} differs from the ground truth", e["user_id"]);
    }
}

pub fn all_enrichments() -> Value {
    json!({"roles": true, "authentication_methods": true, "authenticators": true, "enrollments": true})
}

/// Whether the ground truth says the user has a confirmed MFA factor (PRODUCT.md's rule).
pub fn truth_has_mfa(t: &Value) -> bool {
    let factor =
        |i: &Value| !matches!(i["type"].as_str(), Some("password" | "email-verification")) && i["confirmed"] == true;
    t["authentication_methods"].as_array().unwrap().iter().any(factor)
        || t["authenticators"].as_array().unwrap().iter().any(factor)
        || t["enrollments"].as_array().unwrap().iter().any(|e| e["status"] == "confirmed")
}

/// A JSON value compared exactly: numbers by their text (every digit), strings decoded, keys
/// unordered (the last of a repeated key wins), whitespace ignored.
#[derive(Debug, PartialEq)]
pub enum Exact {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Exact>),
    Obj(std::collections::BTreeMap<String, Exact>),
}

pub fn exact(text: &str) -> Exact {
    use serde_json::value::RawValue;
    let t = text.trim();
    match t.as_bytes().first() {
        Some(b'{') => {
            let members: Vec<(String, &RawValue)> = serde_json::from_str::<ExactObject>(t).expect("an object").0;
            Exact::Obj(members.into_iter().map(|(k, v)| (k, exact(v.get()))).collect())
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(t).expect("an array");
            Exact::Arr(items.into_iter().map(|v| exact(v.get())).collect())
        }
        Some(b'"') => Exact::Str(serde_json::from_str(t).expect("a string")),
        Some(b't') => Exact::Bool(true),
        Some(b'f') => Exact::Bool(false),
        Some(b'n') => Exact::Null,
        _ => Exact::Num(t.to_owned()),
    }
}

/// An object's members in order, each value as text.
struct ExactObject<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for ExactObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ExactObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry()? {
                    out.push(e);
                }
                Ok(ExactObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The sim's exact ground truth restricted to what an export requested, keyed by user_id.
pub fn exact_truth(sim: &auth0_sim::Sim, enrich: &[&str]) -> Vec<(String, Exact)> {
    sim.truth_lines()
        .iter()
        .map(|line| {
            let Exact::Obj(mut obj) = exact(line) else { panic!("truth lines are objects") };
            for key in ["roles", "authentication_methods", "authenticators", "enrollments"] {
                if !enrich.contains(&key) {
                    obj.remove(key);
                }
            }
            let Some(Exact::Str(id)) = obj.get("user_id") else { panic!("truth has user_id") };
            (id.clone(), Exact::Obj(obj))
        })
        .collect()
}

/// A `serve` process of the real binary, so a crash can be a real `kill -9` and a graceful stop
/// a real SIGTERM. `worker_toml` adds lines to its `[worker]` settings.
pub fn spawn_process(sim_url: &str, database_url: &str, rate: f64, worker_toml: &str) -> tokio::process::Child {
    spawn_process_with(sim_url, database_url, rate, worker_toml, &[])
}

/// [`spawn_process`] with extra environment variables (e.g. `EXPORTER_CRASH_AT`).
pub fn spawn_process_with(
    sim_url: &str,
    database_url: &str,
    rate: f64,
    worker_toml: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let config = std::env::temp_dir().join(format!("exporter-test-{}.toml", uuid::Uuid::new_v4().simple()));
    let settings = format!("[worker]\nconcurrency = 2\npoll_interval_ms = 100\nenrich_batch = 10\n{worker_toml}\n");
    std::fs::write(&config, settings).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_auth0-exporter"))
        .args(["serve", "--role", "worker"])
        .env("EXPORTER_CONFIG", &config)
        .env("DATABASE_URL", database_url)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("AUTH0_BASE_URL", sim_url)
        .env("AUTH0_TENANT", "sim")
        .env("AUTH0_CLIENT_ID", "sim-client")
        .env("AUTH0_CLIENT_SECRET", "sim-secret")
        .env("AUTH0_RATE_LIMIT", rate.to_string())
        .env("API_TOKENS", format!("writer:{WRITE_TOKEN}:read+write"))
        .env("ENRICH_CONCURRENCY", "8")
        .env("RUST_LOG", std::env::var("CHILD_LOG").unwrap_or_else(|_| "error".into()))
        .stdout(std::process::Stdio::null())
        .stderr(if std::env::var("CHILD_LOG").is_ok() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .spawn()
        .expect("the service binary starts")
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &tokio::process::Child) {
    let pid = child.id().expect("a running child").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(status.success());
}

/// An API-only instance on `database_url`: the test watches and steers through it while worker
/// processes do the work.
pub async fn spawn_api(sim: Arc<Sim>, database_url: &str, rate: f64) -> TestApp {
    spawn_replica(sim, database_url, rate, auth0_exporter::app::Role::Api).await
}

/// Prints one figure line that docs/reliability.md is written from.
pub fn report(scenario: &str, figures: &[(&str, String)]) {
    let fields: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RELIABILITY scenario={scenario:?} {}", fields.join(" "));
}

/// Held by the tests that time the service (cancel, outage answers) or load the machine with
/// several service processes (kills, the compressed long run), so none of them skews another.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
