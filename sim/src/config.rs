//! Simulator configuration and the runtime-adjustable fault settings.

use std::time::Duration;

/// Everything that shapes the simulated tenant and its limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of users in the tenant.
    pub users: u64,
    /// Number of roles in the tenant.
    pub roles: u32,
    /// Sustained requests per second over all /api/v2 calls.
    pub rate: f64,
    /// Token bucket size.
    pub burst: u32,
    /// Seed of the deterministic data generator.
    pub seed: u64,
    /// Share of users with confirmed MFA factors.
    pub mfa_share: f64,
    pub client_id: String,
    pub client_secret: String,
    /// The audience a token request must name exactly. `None`: `{base_url}/api/v2/`, where the base
    /// URL is the sim's own (`http://127.0.0.1:PORT`) or `http://{Host header}`.
    pub audience: Option<String>,
    /// Scopes of the client grant; every issued token carries them and every /api/v2 endpoint
    /// answers 403 insufficient_scope without the scope it needs.
    pub scopes: Vec<String>,
    /// Tenant name; the export file is `{tenant}.json.gz` / `{tenant}.csv.gz`.
    pub tenant: String,
    pub token_ttl: Duration,
    /// A download link answers 403 once this is over.
    pub link_ttl: Duration,
    /// Tenant log records older than this are purged: GET /logs no longer serves them and a `from`
    /// naming one answers 400 (Auth0 keeps logs for a period set by the subscription plan).
    pub log_retention: Duration,
    /// Export job time = `job_base + users * job_per_user`.
    pub job_base: Duration,
    pub job_per_user: Duration,
    pub faults: Faults,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            users: 1000,
            roles: 20,
            rate: 50.0,
            burst: 50,
            seed: 42,
            mfa_share: 0.3,
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            audience: None,
            scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            tenant: "sim-tenant".into(),
            token_ttl: Duration::from_secs(86_400),
            link_ttl: Duration::from_secs(60),
            log_retention: Duration::from_secs(86_400),
            job_base: Duration::from_secs(1),
            job_per_user: Duration::from_micros(20),
            faults: Faults::default(),
        }
    }
}

/// The scopes auth0-exporter needs (AUTH0.md: exports and jobs `read:users`, roles `read:roles`, role
/// members and user roles all of `read:users read:roles read:role_members`, MFA `read:authentication_methods`;
/// tenant logs `read:logs`, per Auth0's get_logs reference).
pub const DEFAULT_SCOPES: [&str; 5] =
    ["read:users", "read:roles", "read:role_members", "read:authentication_methods", "read:logs"];

impl Config {
    /// The burst matching a rate when none is given: the rate rounded up, at least 1.
    pub fn default_burst(rate: f64) -> u32 {
        (rate.ceil() as u32).max(1)
    }
}

/// Faults injected into the simulator; replaceable at runtime.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of /api/v2 calls answered with an injected 500/503.
    pub error_rate: f64,
    /// Added latency per /api/v2 call, uniform in `[min, max]` ms.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// The next N downloads send part of the gzip body, then abort the stream.
    pub cut_downloads: u32,
    /// The next N downloads answer 403 as if the link had expired.
    pub expire_downloads: u32,
    /// The next N created export jobs end `failed` instead of `completed`.
    pub fail_jobs: u32,
    /// The next N created export jobs end `expired` (no `location`) instead of `completed`.
    pub expire_jobs: u32,
    /// The next N /api/v2 calls answer 503 with the Management error body.
    pub fail_next_calls: u32,
    /// Starts an outage of this many ms when the faults are set: every /api/v2 call answers 503.
    /// Turned into `outage_until_ms` (and reset to 0) on arrival.
    pub outage_ms: u64,
    /// Every /api/v2 call answers 503 until this UNIX time in ms.
    pub outage_until_ms: u64,
}

impl Faults {
    /// Turns a relative `outage_ms` into an absolute `outage_until_ms` starting now.
    pub fn arm(mut self) -> Faults {
        if self.outage_ms > 0 {
            self.outage_until_ms = self.outage_until_ms.max(unix_ms() + self.outage_ms);
            self.outage_ms = 0;
        }
        self
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}
