//! Auth0-shaped log records for what happens in the simulated tenant.
//!
//! Type codes and detail fields follow Auth0's log schemas (github.com/auth0/auth0-log-schemas,
//! `schemas/log-types/*.schema.json`) and the "Log Event Type Codes" page. Values Auth0 does not
//! document (descriptions, client names, `operation` words) are marked [UNVERIFIED].

use serde_json::{json, Map, Value};

use crate::config::unix_ms;
use crate::data::Rng;
use crate::overlay::Overlay;
use crate::{lock, AppState};

/// The application end users sign in through (user-flow records).
const APP_CLIENT_ID: &str = "simWebAppClient0000000000000001";
const APP_CLIENT_NAME: &str = "Sim Web App";
/// Dashboard changes: `sapi` records of people editing the tenant in manage.auth0.com.
const DASHBOARD_CLIENT_ID: &str = "simDashboardClient000000000001";
const DASHBOARD_CHANNEL: &str = "https://manage.auth0.com/";
const ADMIN_IP: &str = "198.51.100.7";
const ADMIN_AGENT: &str = "Chrome 126.0.0 / Mac OS X 10.15.7";
const USER_AGENTS: [&str; 4] =
    ["Chrome 126.0.0 / Windows 10.0.0", "Safari 17.5.0 / iOS 17.5.1", "Firefox 127.0.0 / Ubuntu", "okhttp 4.12.0"];

/// `/`-safe percent-encoding of a path segment (`auth0|x` -> `auth0%7Cx`), as Auth0 logs request paths.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn record(ty: &str, description: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!(ty));
    m.insert("description".into(), json!(description));
    m
}

/// `sapi` ("Successful API Operation"): the changed user is only in the path (or the bodies), never in
/// `user_id`; `details.request.auth.user` is the admin who made the change, not the changed user.
pub fn sapi(
    description: &str,
    method: &str,
    path: &str,
    body: Value,
    status: u16,
    response: Value,
) -> Map<String, Value> {
    let mut m = record("sapi", description);
    m.insert("client_id".into(), json!(DASHBOARD_CLIENT_ID));
    // [UNVERIFIED] dashboard client name.
    m.insert("client_name".into(), json!(""));
    m.insert("ip".into(), json!(ADMIN_IP));
    m.insert("user_agent".into(), json!(ADMIN_AGENT));
    m.insert(
        "details".into(),
        json!({
            "request": {
                "method": method,
                "path": path,
                "query": {},
                "userAgent": ADMIN_AGENT,
                "body": body,
                "channel": DASHBOARD_CHANNEL,
                "ip": ADMIN_IP,
                "auth": {
                    "user": {"user_id": "google-oauth2|100000000000000000001", "email": "admin@sim.example", "name": "Sim Admin"},
                    "strategy": "jwt",
                    "credentials": {"scopes": ["update:users", "delete:users", "create:users", "update:guardian_factors"]},
                },
            },
            "response": {"statusCode": status, "body": response},
        }),
    );
    m
}

/// The user-flow fields: who, through which connection and application.
pub fn user_record(
    st: &AppState,
    o: &Overlay,
    idx: u32,
    ty: &str,
    description: &str,
    rng: &mut Rng,
) -> Map<String, Value> {
    let t = &st.tenant;
    let mut m = record(ty, description);
    let raw = o.user_raw(t, idx);
    let field =
        |key: &str| raw.iter().find(|(k, _)| k == key).and_then(|(_, v)| serde_json::from_str::<String>(v).ok());
    let conn = &t.connections[o.conn(t, idx) as usize];
    let strategy_type = match conn.strategy {
        "auth0" => "database",
        "samlp" => "enterprise",
        _ => "social",
    };
    m.insert("client_id".into(), json!(APP_CLIENT_ID));
    m.insert("client_name".into(), json!(APP_CLIENT_NAME));
    m.insert("ip".into(), json!(format!("203.0.113.{}", rng.below(255))));
    m.insert("user_agent".into(), json!(*rng.pick(&USER_AGENTS)));
    m.insert("hostname".into(), json!(format!("{}.auth0.com", t.tenant)));
    m.insert("user_id".into(), json!(o.user_id(t, idx)));
    m.insert("user_name".into(), json!(field("email").or_else(|| field("username")).unwrap_or_default()));
    m.insert("connection".into(), json!(conn.name));
    m.insert("connection_id".into(), json!(conn.id));
    m.insert("strategy".into(), json!(conn.strategy));
    m.insert("strategy_type".into(), json!(strategy_type));
    m.insert("details".into(), json!({}));
    m
}

/// Details of the Guardian records (`gd_enrollment_complete`, `gd_unenroll`, `gd_update_device_account`).
pub fn guardian_details(st: &AppState, user_id: &str, method: &Value) -> Value {
    let id = method["id"].as_str().unwrap_or_default();
    let device = id.split_once('|').map_or(id, |x| x.1);
    let mut enrollment = json!({"_id": device, "tenant": st.tenant.tenant, "user_id": user_id});
    if let Some(name) = method.get("name") {
        enrollment["name"] = name.clone();
    }
    json!({
        "authenticator": {"id": id, "type": method["type"]},
        "enrollment": enrollment,
    })
}

/// Unrelated traffic every tenant logs: logins, token exchanges, wrong passwords, logouts and
/// machine-to-machine tokens. It changes no user data (a real `s` would bump `logins_count`; the sim
/// keeps the profiles still so an export stays comparable with the truth).
pub fn noise(st: &AppState, o: &Overlay, rng: &mut Rng) -> Map<String, Value> {
    const KINDS: [(&str, &str); 5] = [
        ("s", "Successful login"),
        ("seacft", "Authorization Code for Access Token"),
        ("fp", "Wrong email or password."),
        ("slo", "User successfully logged out"),
        ("seccft", "Client Credentials for Access Token"),
    ];
    let (ty, description) = *rng.pick(&KINDS);
    if ty == "seccft" {
        return client_credentials(st, "", "");
    }
    let total = o.total() as u64;
    if total == 0 {
        return client_credentials(st, "", "");
    }
    let idx = (0..8).map(|_| rng.below(total) as u32).find(|i| !o.deleted.contains(i)).unwrap_or(0);
    let mut m = user_record(st, o, idx, ty, description, rng);
    if ty == "s" {
        m.insert("details".into(), json!({"prompts": [], "initiatedAt": unix_ms(), "completedAt": unix_ms(), "elapsedTime": 1, "session_id": rng.alnum(32)}));
    }
    m
}

/// `seccft`: a machine-to-machine token (the exporter's own token requests among them).
pub fn client_credentials(st: &AppState, client_id: &str, audience: &str) -> Map<String, Value> {
    let mut m = record("seccft", "Client Credentials for Access Token");
    m.insert("client_id".into(), json!(if client_id.is_empty() { "simBatchJobClient000000000001" } else { client_id }));
    m.insert("client_name".into(), json!(if client_id.is_empty() { "Nightly batch" } else { "" }));
    m.insert("ip".into(), json!("192.0.2.10"));
    m.insert("user_agent".into(), json!("Other 0.0.0 / Other 0.0.0"));
    m.insert("hostname".into(), json!(format!("{}.auth0.com", st.tenant.tenant)));
    m.insert("user_id".into(), json!(""));
    m.insert("user_name".into(), json!(""));
    let audience = if audience.is_empty() { format!("{}/api/v2/", st.base_url) } else { audience.to_string() };
    m.insert("audience".into(), json!(audience));
    m.insert("details".into(), json!({}));
    m
}

/// Appends records now (outside a mutation: token grants, export jobs).
fn append(st: &AppState, body: Map<String, Value>) {
    lock(&st.logs).push(unix_ms() as i64, body);
}

/// A token was granted: `seccft`.
pub fn token_granted(st: &AppState, audience: &str) {
    append(st, client_credentials(st, &st.cfg.client_id, audience));
}

/// POST /api/v2/jobs/users-exports writes a `sapi` too (Auth0 logs every Management API write).
pub fn export_created(st: &AppState, job_id: &str, body: &Value) {
    let mut m = sapi(
        "Create a users export job",
        "post",
        "/api/v2/jobs/users-exports",
        body.clone(),
        200,
        json!({"type": "users_export", "status": "pending", "id": job_id}),
    );
    m.insert("client_id".into(), json!(st.cfg.client_id));
    if let Some(req) = m.get_mut("details").and_then(|d| d.get_mut("request")).and_then(Value::as_object_mut) {
        // [UNVERIFIED] channel of machine-to-machine calls; no dashboard admin behind them.
        req.insert("channel".into(), json!("api"));
        req.insert("auth".into(), json!({"strategy": "jwt", "credentials": {"scopes": st.cfg.scopes}}));
    }
    append(st, m);
}

/// The history a started tenant already has: some unrelated records over the past hour.
pub fn history(st: &AppState, o: &Overlay) -> Vec<(i64, Map<String, Value>)> {
    let mut rng = Rng::stream(st.cfg.seed, 0, 0x106);
    let now = unix_ms() as i64;
    (0..24).map(|i| (now - (24 - i) * 150_000 - rng.below(60_000) as i64, noise(st, o, &mut rng))).collect()
}
