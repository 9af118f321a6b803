//! Typed settings: embedded defaults, an optional TOML file, then environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context};
use secrecy::SecretString;
use serde::Deserialize;
use sha2::Digest;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: Option<SecretString>,
    pub listen_addr: SocketAddr,
    pub tenants: Vec<TenantConfig>,
    pub api_tokens: Vec<ApiToken>,
    pub worker: WorkerSettings,
    pub webhooks: WebhookSettings,
    pub schedules: ScheduleSettings,
    /// A request that has not produced its response head by then answers 503.
    pub request_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct TenantConfig {
    pub name: String,
    /// `https://{domain}` or the `AUTH0_BASE_URL` override, without a trailing slash.
    pub base_url: String,
    pub audience: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Requests per second, all replicas together.
    pub rate_limit: f64,
    /// How long the tenant keeps its logs (1, 5, 10 or 30 days by plan): an incremental export
    /// whose base is older runs in full.
    pub log_retention: Duration,
}

#[derive(Clone)]
pub struct ApiToken {
    pub name: String,
    /// SHA-256 of the token: configured as such (`name:sha256:<hex>:scopes`) or hashed from the
    /// plain token at start, so the plain text is never kept.
    pub digest: [u8; 32],
    pub read: bool,
    pub write: bool,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("read", &self.read)
            .field("write", &self.write)
            .finish()
    }
}

/// SHA-256 of a presented or configured token.
pub fn token_digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

#[derive(Clone, Debug, Deserialize)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub lease_secs: u64,
    pub poll_interval_ms: u64,
    pub download_batch: usize,
    pub enrich_batch: usize,
    pub drain_secs: u64,
    pub shutdown_grace_secs: u64,
    /// Per-user calls in flight per export; `None` sizes it from the rate limit.
    #[serde(default)]
    pub enrich_concurrency: Option<usize>,
    /// Finished exports older than this (by `finished_at`) are deleted by the sweeper; `None`
    /// keeps them. Set from the top-level `export_retention` / `EXPORT_RETENTION`.
    #[serde(skip)]
    pub export_retention: Option<Duration>,
    /// Finished webhook deliveries (with their attempts and events) and schedule runs older
    /// than this are deleted by the sweeper; `None` keeps them. From the top-level
    /// `history_retention` / `HISTORY_RETENTION`.
    #[serde(skip)]
    pub history_retention: Option<Duration>,
    /// First wait of an Auth0 call's bounded retries (5xx, network); later waits double, four
    /// retries in all. Stages then wait out longer outages on their own, starting at 4 × this.
    pub auth0_retry_base_ms: u64,
    /// Profiles whose roles are written per fenced transaction while folding role memberships.
    pub fold_batch: usize,
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    /// How long a stopping stage may spend storing what it received: the grace period, less a
    /// second for giving the lease back.
    pub fn auth0_retry_base(&self) -> Duration {
        Duration::from_millis(self.auth0_retry_base_ms.max(1))
    }
    pub fn drain_budget(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs.saturating_sub(1).max(1))
    }
}

/// Outbound webhook deliveries.
#[derive(Clone, Debug, Deserialize)]
pub struct WebhookSettings {
    pub timeout_secs: u64,
    pub retry_base_ms: u64,
    pub max_attempts: i32,
    pub concurrency: usize,
    pub allow_http: bool,
}

impl WebhookSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
    pub fn retry_base(&self) -> Duration {
        Duration::from_millis(self.retry_base_ms.max(1))
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct ScheduleSettings {
    pub poll_interval_ms: u64,
}

impl ScheduleSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }
}

#[derive(Deserialize)]
struct FileConfig {
    listen_addr: String,
    rate_limit: f64,
    worker: WorkerSettings,
    webhooks: WebhookSettings,
    schedules: ScheduleSettings,
    request_timeout_secs: u64,
    export_retention: Option<String>,
    history_retention: Option<String>,
    #[serde(default)]
    tenants: Vec<FileTenant>,
}

#[derive(Deserialize)]
struct FileTenant {
    name: String,
    domain: Option<String>,
    base_url: Option<String>,
    audience: Option<String>,
    client_id: String,
    client_secret_env: String,
    rate_limit: Option<f64>,
    log_retention_days: Option<f64>,
}

impl Settings {
    /// Reads the process environment (and the file `EXPORTER_CONFIG` names).
    pub fn from_env() -> anyhow::Result<Settings> {
        Settings::from_lookup(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
    }

    /// Builds settings from a variable lookup, so tests and the demo need not touch the process env.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        // The file overrides the embedded defaults key by key, so it need only name what differs.
        let mut table: toml::Table = toml::from_str(DEFAULTS).context("embedded config/default.toml")?;
        if let Some(path) = var("EXPORTER_CONFIG") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading EXPORTER_CONFIG {path}"))?;
            let file: toml::Table = toml::from_str(&text).with_context(|| format!("parsing EXPORTER_CONFIG {path}"))?;
            merge(&mut table, file);
        }
        let file: FileConfig = table.try_into().context("EXPORTER_CONFIG does not fit config/default.toml's shape")?;

        let listen_addr = var("LISTEN_ADDR").unwrap_or(file.listen_addr);
        let listen_addr: SocketAddr =
            listen_addr.parse().with_context(|| format!("LISTEN_ADDR {listen_addr:?} is not host:port"))?;

        let default_rate = match var("AUTH0_RATE_LIMIT") {
            Some(v) => parse_rate("AUTH0_RATE_LIMIT", &v)?,
            None => check_rate("rate_limit", file.rate_limit)?,
        };

        let mut worker = file.worker;
        if let Some(v) = var("WORKER_CONCURRENCY") {
            worker.concurrency = v.parse().context("WORKER_CONCURRENCY must be a positive integer")?;
        }
        if let Some(v) = var("ENRICH_CONCURRENCY") {
            worker.enrich_concurrency = Some(v.parse().context("ENRICH_CONCURRENCY must be a positive integer")?);
        }

        let mut tenants = Vec::new();
        if var("AUTH0_DOMAIN").is_some() || var("AUTH0_BASE_URL").is_some() {
            tenants.push(env_tenant(&var, default_rate)?);
        }
        for t in file.tenants {
            let secret = var(&t.client_secret_env)
                .with_context(|| format!("tenant {}: {} is not set", t.name, t.client_secret_env))?;
            let base_url = tenant_base_url(t.domain.as_deref(), t.base_url.as_deref())
                .with_context(|| format!("tenant {} needs domain or base_url", t.name))?;
            let rate_limit = match t.rate_limit {
                Some(r) => check_rate(&format!("tenant {} rate_limit", t.name), r)?,
                None => default_rate,
            };
            let log_retention = retention_days(&format!("tenant {} log_retention_days", t.name), t.log_retention_days)?;
            tenants.push(TenantConfig {
                audience: t.audience.unwrap_or_else(|| default_audience(&base_url)),
                name: t.name,
                base_url,
                client_id: t.client_id,
                client_secret: SecretString::from(secret),
                rate_limit,
                log_retention,
            });
        }
        for (i, t) in tenants.iter().enumerate() {
            if tenants[..i].iter().any(|o| o.name == t.name) {
                bail!("tenant {} is configured twice", t.name);
            }
        }

        let request_timeout = match var("REQUEST_TIMEOUT_SECS") {
            Some(v) => {
                v.parse().ok().filter(|&n: &u64| n > 0).context("REQUEST_TIMEOUT_SECS must be a positive integer")?
            }
            None => file.request_timeout_secs,
        };
        worker.export_retention = retention("EXPORT_RETENTION", var("EXPORT_RETENTION").or(file.export_retention))?;
        worker.history_retention = retention("HISTORY_RETENTION", var("HISTORY_RETENTION").or(file.history_retention))?;

        let mut webhooks = file.webhooks;
        if let Some(v) = var("WEBHOOK_TIMEOUT_SECS") {
            webhooks.timeout_secs =
                v.parse().ok().filter(|&n: &u64| n > 0).context("WEBHOOK_TIMEOUT_SECS must be a positive integer")?;
        }
        if let Some(v) = var("WEBHOOK_ALLOW_HTTP") {
            webhooks.allow_http = v.parse().context("WEBHOOK_ALLOW_HTTP must be true or false")?;
        }
        if webhooks.max_attempts < 1 {
            bail!("webhooks.max_attempts must be at least 1");
        }

        Ok(Settings {
            database_url: var("DATABASE_URL").map(SecretString::from),
            listen_addr,
            tenants,
            api_tokens: parse_api_tokens(&var("API_TOKENS").unwrap_or_default())?,
            worker,
            webhooks,
            schedules: file.schedules,
            request_timeout: Duration::from_secs(request_timeout),
        })
    }
}

/// Overlays `over` on `base`, descending into tables so a file can change one key of a section.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn env_tenant(var: &impl Fn(&str) -> Option<String>, rate_limit: f64) -> anyhow::Result<TenantConfig> {
    let domain = var("AUTH0_DOMAIN");
    let base_url = tenant_base_url(domain.as_deref(), var("AUTH0_BASE_URL").as_deref()).expect("checked by caller");
    let name = var("AUTH0_TENANT")
        .or_else(|| domain.as_deref().and_then(|d| d.split('.').next()).map(str::to_owned))
        .unwrap_or_else(|| "default".into());
    Ok(TenantConfig {
        audience: var("AUTH0_AUDIENCE").unwrap_or_else(|| default_audience(&base_url)),
        name,
        base_url,
        client_id: var("AUTH0_CLIENT_ID").context("AUTH0_CLIENT_ID is required when AUTH0_DOMAIN is set")?,
        client_secret: SecretString::from(
            var("AUTH0_CLIENT_SECRET").context("AUTH0_CLIENT_SECRET is required when AUTH0_DOMAIN is set")?,
        ),
        rate_limit,
        log_retention: retention_days(
            "AUTH0_LOG_RETENTION_DAYS",
            var("AUTH0_LOG_RETENTION_DAYS").map(|v| v.parse::<f64>().unwrap_or(f64::NAN)),
        )?,
    })
}

/// A tenant's log retention in days (default 1, Auth0's shortest).
fn retention_days(name: &str, days: Option<f64>) -> anyhow::Result<Duration> {
    match days {
        None => Ok(Duration::from_secs(86_400)),
        Some(d) if d.is_finite() && d > 0.0 => Ok(Duration::from_secs_f64(d * 86_400.0)),
        Some(d) => bail!("{name} must be a positive number of days, got {d}"),
    }
}

fn tenant_base_url(domain: Option<&str>, base_url: Option<&str>) -> Option<String> {
    base_url
        .map(|u| u.trim_end_matches('/').to_owned())
        .or_else(|| domain.map(|d| format!("https://{}", d.trim_end_matches('/'))))
}

/// The Management API identifier: `https://{domain}/api/v2/`, trailing slash included.
pub fn default_audience(base_url: &str) -> String {
    format!("{base_url}/api/v2/")
}

fn parse_rate(name: &str, value: &str) -> anyhow::Result<f64> {
    check_rate(name, value.parse::<f64>().unwrap_or(f64::NAN))
        .with_context(|| format!("{name} must be a positive number of requests per second, got {value:?}"))
}

fn check_rate(name: &str, rate: f64) -> anyhow::Result<f64> {
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        bail!("{name} must be a positive number of requests per second, got {rate}")
    }
}

/// A retention setting: `off`, or a duration as [`parse_retention`] reads it.
fn retention(name: &str, value: Option<String>) -> anyhow::Result<Option<Duration>> {
    match value.as_deref() {
        None | Some("off") => Ok(None),
        Some(v) => parse_retention(v)
            .map(Some)
            .with_context(|| format!("{name} must be like 30d, 12h, 90m or 3600s (or off), got {v:?}")),
    }
}

/// A positive whole number of days, hours, minutes or seconds (`30d`, `12h`, `90m`, `3600s`).
fn parse_retention(text: &str) -> anyhow::Result<Duration> {
    let unit_secs = match text.chars().last() {
        Some('d') => 86_400,
        Some('h') => 3_600,
        Some('m') => 60,
        Some('s') => 1,
        _ => 0,
    };
    let amount = text[..text.len().saturating_sub(1)].parse::<u64>().ok().filter(|&n| n > 0);
    match (amount, unit_secs) {
        (Some(n), unit) if unit > 0 => Ok(Duration::from_secs(n.saturating_mul(unit))),
        _ => bail!("not a positive number of days, hours, minutes or seconds"),
    }
}

/// `name:token:scopes` or `name:sha256:<64 hex digits>:scopes` entries, comma separated,
/// scopes joined by `+`.
pub fn parse_api_tokens(spec: &str) -> anyhow::Result<Vec<ApiToken>> {
    let mut tokens: Vec<ApiToken> = Vec::new();
    for (i, entry) in spec.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let parts: Vec<&str> = entry.split(':').collect();
        let (name, digest, scopes) = match parts[..] {
            [name, "sha256", hex, scopes] => {
                let digest = parse_sha256(hex).with_context(|| {
                    format!("API_TOKENS entry {name}: sha256 needs the token's SHA-256 as 64 hex digits")
                })?;
                (name, digest, scopes)
            }
            [name, token, scopes] if !token.is_empty() => (name, token_digest(token), scopes),
            [_, "", _] => bail!("API_TOKENS entry {} has an empty token", i + 1),
            _ => bail!("API_TOKENS entry {} is not name:token:scopes or name:sha256:<hex>:scopes", i + 1),
        };
        if name.is_empty() {
            bail!("API_TOKENS entry {} has an empty name", i + 1);
        }
        let (mut read, mut write) = (false, false);
        for scope in scopes.split('+') {
            match scope {
                "read" => read = true,
                "write" => write = true,
                other => bail!("API_TOKENS entry {name}: unknown scope {other:?} (use read, write)"),
            }
        }
        if tokens.iter().any(|t| t.digest == digest) {
            bail!("API_TOKENS entry {name}: the same token is configured twice");
        }
        tokens.push(ApiToken { name: name.into(), digest, read, write });
    }
    Ok(tokens)
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn env_tenant_derives_audience_and_name_from_domain() {
        let s = settings(&[
            ("AUTH0_DOMAIN", "acme.eu.auth0.com"),
            ("AUTH0_CLIENT_ID", "id"),
            ("AUTH0_CLIENT_SECRET", "shh"),
            ("AUTH0_RATE_LIMIT", "2"),
        ])
        .unwrap();
        let t = &s.tenants[0];
        assert_eq!(t.name, "acme");
        assert_eq!(t.base_url, "https://acme.eu.auth0.com");
        assert_eq!(t.audience, "https://acme.eu.auth0.com/api/v2/");
        assert_eq!(t.rate_limit, 2.0);
        assert_eq!(s.listen_addr.port(), 8080);
        assert_eq!(s.worker.concurrency, 4);
    }

    #[test]
    fn base_url_override_wins() {
        let s = settings(&[
            ("AUTH0_DOMAIN", "acme.eu.auth0.com"),
            ("AUTH0_BASE_URL", "http://127.0.0.1:9000/"),
            ("AUTH0_CLIENT_ID", "id"),
            ("AUTH0_CLIENT_SECRET", "shh"),
        ])
        .unwrap();
        assert_eq!(s.tenants[0].base_url, "http://127.0.0.1:9000");
        assert_eq!(s.tenants[0].audience, "http://127.0.0.1:9000/api/v2/");
    }

    #[test]
    fn api_tokens_parse_scopes() {
        let t = parse_api_tokens("dash:abc:read, ops:xyz:read+write").unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0].read && !t[0].write);
        assert!(t[1].read && t[1].write);
        assert_eq!(t[1].digest, token_digest("xyz"));
        assert!(parse_api_tokens("x:y:admin").unwrap_err().to_string().contains("admin"));
        assert!(parse_api_tokens("novalue").is_err());
        assert!(parse_api_tokens("a:t:read,b:t:write").unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn retention_reads_days_hours_minutes_and_seconds() {
        assert_eq!(parse_retention("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_retention("12h").unwrap(), Duration::from_secs(12 * 3_600));
        assert_eq!(parse_retention("90m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_retention("1s").unwrap(), Duration::from_secs(1));
        for bad in ["", "d", "0d", "30", "30w", "-1d", "1.5h", "30 d"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
        let s = Settings::from_lookup(|k| (k == "EXPORT_RETENTION").then(|| "7d".to_owned())).unwrap();
        assert_eq!(s.worker.export_retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(Settings::from_lookup(|_| None).unwrap().worker.export_retention, None);
        let e = Settings::from_lookup(|k| (k == "EXPORT_RETENTION").then(|| "7x".to_owned())).err().unwrap();
        assert!(format!("{e:#}").contains("EXPORT_RETENTION must be like 30d"), "{e:#}");
        // Delivery and schedule-run history is kept 30 days unless set otherwise.
        assert_eq!(
            Settings::from_lookup(|_| None).unwrap().worker.history_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        let s = Settings::from_lookup(|k| (k == "HISTORY_RETENTION").then(|| "off".to_owned())).unwrap();
        assert_eq!(s.worker.history_retention, None);
    }

    #[test]
    fn api_tokens_may_be_configured_as_sha256_hashes() {
        // SHA-256 of "xyz".
        let hex = "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282";
        // SHA-256 of "abc", in capitals.
        let upper = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        let t = parse_api_tokens(&format!("ops:sha256:{hex}:read+write, dash:sha256:{upper}:read")).unwrap();
        assert_eq!(t[0].digest, token_digest("xyz"));
        assert_eq!(t[1].digest, token_digest("abc"));
        assert!(t[0].read && t[0].write && t[1].read && !t[1].write);
        for bad in [&hex[..63], "zz08bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282", ""] {
            let err = parse_api_tokens(&format!("ops:sha256:{bad}:read")).unwrap_err().to_string();
            assert!(err.contains("64 hex digits"), "{bad}: {err}");
        }
        // The debug form names the token, never its digest or text.
        assert!(!format!("{:?}", t[0]).contains("digest"));
    }

    #[test]
    fn a_config_file_overrides_single_keys_and_adds_tenants() {
        let path = std::env::temp_dir().join(format!("exporter-config-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "rate_limit = 2.0\n[worker]\nlease_secs = 3\n[[tenants]]\nname = \"staging\"\ndomain = \"acme-stg.eu.auth0.com\"\nclient_id = \"c\"\nclient_secret_env = \"STG_SECRET\"\n",
        )
        .unwrap();
        let s = settings(&[("EXPORTER_CONFIG", path.to_str().unwrap()), ("STG_SECRET", "s3cret")]).unwrap();
        assert_eq!(s.worker.lease_secs, 3);
        assert_eq!(s.worker.concurrency, 4, "other keys keep their defaults");
        let t = &s.tenants[0];
        assert_eq!((t.name.as_str(), t.rate_limit), ("staging", 2.0));
        assert_eq!(t.audience, "https://acme-stg.eu.auth0.com/api/v2/");
        assert_eq!(t.client_secret.expose_secret(), "s3cret");
        let missing = settings(&[("EXPORTER_CONFIG", path.to_str().unwrap())]).unwrap_err();
        assert!(missing.to_string().contains("STG_SECRET"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_rate_limit_is_rejected() {
        let err = settings(&[
            ("AUTH0_DOMAIN", "a.auth0.com"),
            ("AUTH0_CLIENT_ID", "id"),
            ("AUTH0_CLIENT_SECRET", "s"),
            ("AUTH0_RATE_LIMIT", "-1"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("AUTH0_RATE_LIMIT"));
    }
}
