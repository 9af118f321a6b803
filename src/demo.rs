//! `demo`: one whole export on embedded defaults — a throwaway Postgres (unless `DATABASE_URL` is
//! set), the bundled auth0-sim, the service, a progress bar, and a check against the sim's truth.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::{
    app::{shutdown_signal, Application, Role},
    config::Settings,
};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Users in the simulated tenant.
    #[arg(long, default_value_t = 2000)]
    pub users: u64,
    /// Roles in the simulated tenant.
    #[arg(long, default_value_t = 20)]
    pub roles: u32,
    /// Management API requests per second (the sim's limit and the service's budget).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Also fetch `authenticators` and `enrollments` (two more calls per user), not only the
    /// default `roles` and `authentication_methods`.
    #[arg(long)]
    pub enrich_all: bool,
    /// Exit once the export is verified instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let local_pg = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(_) => None,
        None => Some(LocalPostgres::start().context("starting a throwaway Postgres")?),
    };
    let database_url = match &local_pg {
        Some(pg) => pg.url(),
        None => std::env::var("DATABASE_URL")?,
    };

    let sim_config = auth0_sim::Config {
        users: args.users,
        roles: args.roles,
        rate: args.rate,
        burst: args.rate.ceil() as u32,
        ..auth0_sim::Config::default()
    };
    let sim = auth0_sim::Sim::start(sim_config.clone(), "127.0.0.1:0".parse()?).await?;
    println!("auth0-sim: {} ({} users, {} roles, {} requests/s)", sim.base_url(), args.users, args.roles, args.rate);

    let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let vars: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", database_url),
        ("LISTEN_ADDR", listen.clone()),
        ("AUTH0_BASE_URL", sim.base_url()),
        ("AUTH0_TENANT", "demo".into()),
        ("AUTH0_CLIENT_ID", sim_config.client_id.clone()),
        ("AUTH0_CLIENT_SECRET", sim_config.client_secret.clone()),
        ("AUTH0_RATE_LIMIT", args.rate.to_string()),
        ("API_TOKENS", format!("demo:{token}:read+write")),
    ]);
    let mut settings = Settings::from_lookup(|k| vars.get(k).cloned())?;
    // No load balancer to drain: stop at once on Ctrl-C.
    settings.worker.drain_secs = 0;
    let app = match Application::build(settings.clone(), Role::All).await {
        Ok(app) => app,
        Err(e) if format!("{e:#}").contains("LISTEN_ADDR") => {
            println!("{listen} is taken; listening on a free port instead");
            settings.listen_addr = "127.0.0.1:0".parse()?;
            Application::build(settings, Role::All).await?
        }
        Err(e) => return Err(e),
    };
    let base = format!("http://{}", app.local_addr().context("API address")?);
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run());

    let outcome = export_and_verify(&base, &token, &sim, args.enrich_all).await;
    match &outcome {
        Ok(id) => {
            println!("\nFetch the result (token {token}):");
            println!("  curl -H 'Authorization: Bearer {token}' {base}/v1/exports/{id}");
            println!("  curl -H 'Authorization: Bearer {token}' '{base}/v1/exports/{id}/profiles?limit=5'");
            println!(
                "  curl -H 'Authorization: Bearer {token}' '{base}/v1/exports/{id}/profiles?has_mfa=true&limit=5'"
            );
            println!(
                "  curl -H 'Authorization: Bearer {token}' '{base}/v1/exports/{id}/download?format=csv' -o export.csv"
            );
            println!("  curl {base}/metrics    curl {base}/openapi.json");
            if !args.exit {
                println!("\nServing until Ctrl-C.");
                shutdown_signal().await;
            }
        }
        Err(e) => eprintln!("demo failed: {e:#}"),
    }
    stop.cancel();
    server.await??;
    drop(local_pg);
    outcome.map(drop)
}

/// Creates an export over the API, shows its progress, then compares every served profile with
/// the sim's ground truth.
async fn export_and_verify(base: &str, token: &str, sim: &auth0_sim::Sim, enrich_all: bool) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let created: Value = http
        .post(format!("{base}/v1/exports"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "enrich": { "authenticators": enrich_all, "enrollments": enrich_all } }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = created["id"].as_str().context("export id")?.to_owned();
    println!("export {id} queued");

    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} users {msg}")
            .expect("static template"),
    );
    let export = loop {
        let export: Value = http
            .get(format!("{base}/v1/exports/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let p = &export["progress"];
        if let Some(total) = p["users_total"].as_u64() {
            bar.set_length(total.max(1));
        }
        bar.set_position(p["users_enriched"].as_u64().unwrap_or(0));
        let eta = p["eta_seconds"].as_f64().map(|s| format!(", ETA {s:.0}s")).unwrap_or_default();
        bar.set_message(format!(
            "{} ({} Auth0 calls{eta})",
            export["stage"].as_str().unwrap_or("?"),
            export["stats"]["api_calls"]
        ));
        match export["status"].as_str() {
            Some("completed") => break export,
            Some("failed" | "cancelled") => {
                bar.abandon();
                bail!("export ended {}: {}", export["status"], export["error"]);
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    bar.finish();
    let elapsed = started.elapsed();

    let body = http
        .get(format!("{base}/v1/exports/{id}/download?format=ndjson"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let served: HashMap<String, Value> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).map(|v| (v["user_id"].as_str().unwrap_or_default().to_owned(), v)))
        .collect::<Result<_, _>>()?;
    let mut truth = sim.truth();
    if !enrich_all {
        // The sim's truth carries every enrichment; this export fetched the default two.
        for t in &mut truth {
            let t = t.as_object_mut().context("truth is objects")?;
            t.remove("authenticators");
            t.remove("enrollments");
        }
    }
    let matching = truth.iter().filter(|t| served.get(t["user_id"].as_str().unwrap_or_default()) == Some(*t)).count();
    let stats = sim.stats();
    println!(
        "\ncompleted in {:.1}s: {} users, {} Auth0 calls by the service ({} by the sim's count), {} answered 429, {} retries",
        elapsed.as_secs_f64(),
        export["progress"]["users_total"],
        export["stats"]["api_calls"],
        stats.api_calls,
        stats.rate_limited,
        export["stats"]["retries"],
    );
    println!("{matching} of {} profiles equal the sim's ground truth, field for field", truth.len());
    if matching != truth.len() || served.len() != truth.len() {
        bail!("{} profiles served, {} in the tenant, {matching} equal", served.len(), truth.len());
    }
    Ok(id)
}

/// A Postgres cluster in a temporary directory, stopped and removed on drop.
pub struct LocalPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl LocalPostgres {
    pub fn start() -> anyhow::Result<LocalPostgres> {
        let bin = postgres_bin_dir().context("no PostgreSQL server binaries found (apt-get install postgresql)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("auth0-exporter-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // initdb and pg_ctl refuse to run as root: hand the directory to the postgres user.
        let as_postgres_user = is_root();
        if as_postgres_user {
            exec(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir))?;
        }
        let pg = LocalPostgres { dir, bin, port, as_postgres_user };
        let data = pg.dir.join("data");
        pg.run_pg("initdb", &["-D", path(&data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"])?;
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", path(&pg.dir));
        let log = pg.dir.join("postgres.log");
        pg.run_pg("pg_ctl", &["-D", path(&data), "-o", &opts, "-l", path(&log), "-w", "start"])?;
        println!("throwaway Postgres on 127.0.0.1:{port} ({})", pg.dir.display());
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run_pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        exec(cmd.args(args).current_dir(&self.dir))
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run_pg("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest installed server's bin directory (Debian keeps them under /usr/lib/postgresql).
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        bin.join("initdb").exists().then_some(bin)
    })
}
