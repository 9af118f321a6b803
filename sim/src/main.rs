//! The `auth0-sim` binary: parses flags/env into a Config and serves until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use auth0_sim::{Config, Faults, Sim};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "auth0-sim", about = "Simulator of the Auth0 Management API parts auth0-exporter uses")]
struct Args {
    #[arg(long, env = "SIM_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "SIM_PORT", default_value_t = 9000)]
    port: u16,
    #[arg(long, env = "SIM_USERS", default_value_t = 1000)]
    users: u64,
    #[arg(long, env = "SIM_ROLES", default_value_t = 20)]
    roles: u32,
    /// Sustained /api/v2 requests per second.
    #[arg(long, env = "SIM_RATE", default_value_t = 50.0)]
    rate: f64,
    /// Bucket size; defaults to the rate rounded up.
    #[arg(long, env = "SIM_BURST")]
    burst: Option<u32>,
    #[arg(long, env = "SIM_SEED", default_value_t = 42)]
    seed: u64,
    #[arg(long, env = "SIM_MFA_SHARE", default_value_t = 0.3)]
    mfa_share: f64,
    #[arg(long, env = "SIM_CLIENT_ID", default_value = "sim-client")]
    client_id: String,
    #[arg(long, env = "SIM_CLIENT_SECRET", default_value = "sim-secret")]
    client_secret: String,
    /// Exact audience to require; by default `http://{host}:{port}/api/v2/` (as reached: Host header).
    #[arg(long, env = "SIM_AUDIENCE")]
    audience: Option<String>,
    /// Scopes of the client grant (space- or comma-separated); default the five the exporter needs.
    #[arg(long, env = "SIM_SCOPES")]
    scopes: Option<String>,
    #[arg(long, env = "SIM_TENANT", default_value = "sim-tenant")]
    tenant: String,
    #[arg(long, env = "SIM_TOKEN_TTL_SECS", default_value_t = 86_400)]
    token_ttl_secs: u64,
    #[arg(long, env = "SIM_LINK_TTL_SECS", default_value_t = 60)]
    link_ttl_secs: u64,
    /// Tenant log records older than this are purged.
    #[arg(long, env = "SIM_LOG_RETENTION_SECS", default_value_t = 86_400)]
    log_retention_secs: u64,
    #[arg(long, env = "SIM_JOB_BASE_MS", default_value_t = 1000)]
    job_base_ms: u64,
    #[arg(long, env = "SIM_JOB_PER_USER_US", default_value_t = 20)]
    job_per_user_us: u64,
    /// Share of /api/v2 calls answered with an injected 500/503.
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Added latency per /api/v2 call: `MS` or `MIN-MAX`.
    #[arg(long, env = "SIM_LATENCY_MS", value_parser = parse_latency)]
    latency_ms: Option<(u64, u64)>,
    /// The next N downloads are cut mid-stream.
    #[arg(long, env = "SIM_CUT_DOWNLOADS", default_value_t = 0)]
    cut_downloads: u32,
    /// The next N downloads answer 403 as if expired.
    #[arg(long, env = "SIM_EXPIRE_DOWNLOADS", default_value_t = 0)]
    expire_downloads: u32,
    /// The next N export jobs end `failed`.
    #[arg(long, env = "SIM_FAIL_JOBS", default_value_t = 0)]
    fail_jobs: u32,
    /// The next N export jobs end `expired`.
    #[arg(long, env = "SIM_EXPIRE_JOBS", default_value_t = 0)]
    expire_jobs: u32,
    /// The next N /api/v2 calls answer 503.
    #[arg(long, env = "SIM_FAIL_NEXT_CALLS", default_value_t = 0)]
    fail_next_calls: u32,
    /// Every /api/v2 call answers 503 for this many ms after start.
    #[arg(long, env = "SIM_OUTAGE_MS", default_value_t = 0)]
    outage_ms: u64,
}

fn parse_latency(s: &str) -> Result<(u64, u64), String> {
    let parse = |x: &str| x.trim().parse::<u64>().map_err(|e| format!("{x:?}: {e}"));
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("min {a} > max {b}"));
            }
            Ok((a, b))
        }
        None => parse(s).map(|v| (v, v)),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let a = Args::parse();
    let (latency_min_ms, latency_max_ms) = a.latency_ms.unwrap_or((0, 0));
    let config = Config {
        users: a.users,
        roles: a.roles,
        rate: a.rate,
        burst: a.burst.unwrap_or_else(|| Config::default_burst(a.rate)),
        seed: a.seed,
        mfa_share: a.mfa_share,
        client_id: a.client_id,
        client_secret: a.client_secret,
        audience: a.audience,
        scopes: match a.scopes {
            Some(s) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_string).collect(),
            None => Config::default().scopes,
        },
        tenant: a.tenant,
        token_ttl: Duration::from_secs(a.token_ttl_secs),
        link_ttl: Duration::from_secs(a.link_ttl_secs),
        log_retention: Duration::from_secs(a.log_retention_secs),
        job_base: Duration::from_millis(a.job_base_ms),
        job_per_user: Duration::from_micros(a.job_per_user_us),
        faults: Faults {
            error_rate: a.error_rate,
            latency_min_ms,
            latency_max_ms,
            cut_downloads: a.cut_downloads,
            expire_downloads: a.expire_downloads,
            fail_jobs: a.fail_jobs,
            expire_jobs: a.expire_jobs,
            fail_next_calls: a.fail_next_calls,
            outage_ms: a.outage_ms,
            outage_until_ms: 0,
        },
    };
    let addr: SocketAddr = format!("{}:{}", a.host, a.port).parse()?;
    let sim = Sim::start(config, addr).await?;
    println!("auth0-sim listening on http://{}", sim.addr());
    shutdown_signal().await;
    drop(sim);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
