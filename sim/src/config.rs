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
    /// `None`: accept any audience whose URL path is exactly `/api/v2/`.
    pub audience: Option<String>,
    /// Tenant name; the export file is `{tenant}.json.gz` / `{tenant}.csv.gz`.
    pub tenant: String,
    pub token_ttl: Duration,
    /// A download link answers 403 once this is over.
    pub link_ttl: Duration,
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
            tenant: "sim-tenant".into(),
            token_ttl: Duration::from_secs(86_400),
            link_ttl: Duration::from_secs(60),
            job_base: Duration::from_secs(1),
            job_per_user: Duration::from_micros(20),
            faults: Faults::default(),
        }
    }
}

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
}
