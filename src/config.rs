//! Typed settings: embedded defaults, an optional TOML file, then environment variables.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context};
use secrecy::SecretString;
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: Option<SecretString>,
    pub listen_addr: SocketAddr,
    pub tenants: Vec<TenantConfig>,
    pub api_tokens: Vec<ApiToken>,
    pub worker: WorkerSettings,
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
}

#[derive(Clone, Debug)]
pub struct ApiToken {
    pub name: String,
    pub token: SecretString,
    pub read: bool,
    pub write: bool,
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

#[derive(Deserialize)]
struct FileConfig {
    listen_addr: String,
    rate_limit: f64,
    worker: WorkerSettings,
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
            tenants.push(TenantConfig {
                audience: t.audience.unwrap_or_else(|| default_audience(&base_url)),
                name: t.name,
                base_url,
                client_id: t.client_id,
                client_secret: SecretString::from(secret),
                rate_limit,
            });
        }
        for (i, t) in tenants.iter().enumerate() {
            if tenants[..i].iter().any(|o| o.name == t.name) {
                bail!("tenant {} is configured twice", t.name);
            }
        }

        Ok(Settings {
            database_url: var("DATABASE_URL").map(SecretString::from),
            listen_addr,
            tenants,
            api_tokens: parse_api_tokens(&var("API_TOKENS").unwrap_or_default())?,
            worker,
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
    })
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

/// `name:token:scopes` entries, comma separated, scopes joined by `+`.
pub fn parse_api_tokens(spec: &str) -> anyhow::Result<Vec<ApiToken>> {
    let mut tokens = Vec::new();
    for (i, entry) in spec.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(token), Some(scopes)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("API_TOKENS entry {} is not name:token:scopes", i + 1);
        };
        if name.is_empty() || token.is_empty() {
            bail!("API_TOKENS entry {} has an empty name or token", i + 1);
        }
        let (mut read, mut write) = (false, false);
        for scope in scopes.split('+') {
            match scope {
                "read" => read = true,
                "write" => write = true,
                other => bail!("API_TOKENS entry {name}: unknown scope {other:?} (use read, write)"),
            }
        }
        tokens.push(ApiToken { name: name.into(), token: SecretString::from(token.to_owned()), read, write });
    }
    Ok(tokens)
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
        assert_eq!(t[1].token.expose_secret(), "xyz");
        assert!(parse_api_tokens("x:y:admin").unwrap_err().to_string().contains("admin"));
        assert!(parse_api_tokens("novalue").is_err());
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
