//! End-to-end checks of the simulator over HTTP.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use auth0_sim::{Config, Faults, Sim};
use serde_json::{json, Value};

async fn start(cfg: Config) -> Sim {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Sim::start(cfg, addr).await.unwrap()
}

fn fast(users: u64) -> Config {
    Config {
        users,
        rate: 100_000.0,
        burst: 100_000,
        job_base: Duration::from_millis(300),
        job_per_user: Duration::ZERO,
        ..Config::default()
    }
}

async fn token(c: &reqwest::Client, base: &str) -> String {
    let r = c
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=sim-client&client_secret=sim-secret&audience={}",
            format!("{base}/api/v2/").replace(':', "%3A").replace('/', "%2F")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    v["access_token"].as_str().unwrap().to_string()
}

fn enc(id: &str) -> String {
    id.replace('|', "%7C").replace('@', "%40")
}

async fn get(c: &reqwest::Client, tok: &str, url: String) -> (u16, Value) {
    let r = c.get(url).bearer_auth(tok).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The body of an authorised GET as text, exactly as sent.
async fn get_text(c: &reqwest::Client, tok: &str, url: String) -> String {
    c.get(url).bearer_auth(tok).send().await.unwrap().text().await.unwrap()
}

/// Creates a job, waits for completion, returns the gunzipped file.
async fn export(c: &reqwest::Client, sim: &Sim, tok: &str, body: Value) -> Vec<u8> {
    let base = sim.base_url();
    let r = c.post(format!("{base}/api/v2/jobs/users-exports")).bearer_auth(tok).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["status"], "pending");
    assert_eq!(job["type"], "users_export");
    let id = job["id"].as_str().unwrap();
    assert!(id.starts_with("job_") && id.len() == 20);
    let location = loop {
        let (s, j) = get(c, tok, format!("{base}/api/v2/jobs/{id}")).await;
        assert_eq!(s, 200);
        match j["status"].as_str().unwrap() {
            "completed" => break j["location"].as_str().unwrap().to_string(),
            "pending" | "processing" => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected status {other}"),
        }
    };
    let r = c.get(&location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gzip");
    assert!(r.headers().get("content-encoding").is_none());
    let gz = r.bytes().await.unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
    out
}

fn lines(raw: &[u8]) -> Vec<Value> {
    String::from_utf8(raw.to_vec()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn token_errors() {
    let sim = start(fast(10)).await;
    let c = reqwest::Client::new();
    let url = format!("{}/oauth/token", sim.base_url());
    let aud_ok = format!("{}/api/v2/", sim.base_url());
    let aud_ok = aud_ok.as_str();
    let post = |body: Value| c.post(&url).json(&body).send();
    let r = post(
        json!({"grant_type": "password", "client_id": "sim-client", "client_secret": "sim-secret", "audience": aud_ok}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let r = post(json!({"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "nope", "audience": aud_ok})).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "access_denied", "error_description": "Unauthorized"})
    );
    let wrong = format!("{}/api/v2/jobs/users-exports", sim.base_url());
    for aud in [wrong.as_str(), "https://sim.example/api/v2/", aud_ok.trim_end_matches('/')] {
        let r = post(json!({"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "sim-secret", "audience": aud})).await.unwrap();
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "access_denied");
        assert_eq!(v["error_description"], format!("Service not enabled within domain: {aud}"));
    }
    let r = post(json!({"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "sim-secret", "audience": aud_ok})).await.unwrap();
    assert_eq!(r.status(), 200);
    let tok = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();

    // Bearer checks: missing, unknown, revoked.
    let roles = format!("{}/api/v2/roles", sim.base_url());
    let r = c.get(&roles).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-ratelimit-limit"));
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Missing authentication");
    assert_eq!(get(&c, "garbage", roles.clone()).await.1["message"], "Invalid token");
    assert_eq!(get(&c, &tok, roles.clone()).await.0, 200);
    sim.revoke_tokens();
    assert_eq!(get(&c, &tok, roles.clone()).await.1["message"], "Invalid token");
    assert_eq!(sim.stats().token_requests, 6);
}

#[tokio::test]
async fn expired_token() {
    let sim = start(Config { token_ttl: Duration::from_secs(1), ..fast(10) }).await;
    let c = reqwest::Client::new();
    let tok = token(&c, &sim.base_url()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, v) = get(&c, &tok, format!("{}/api/v2/roles", sim.base_url())).await;
    assert_eq!(s, 401);
    assert_eq!(v["message"], "Expired token received for JSON Web Token validation");
}

#[tokio::test]
async fn rate_limit_headers_and_429() {
    let sim = start(Config { rate: 1.0, burst: 3, ..fast(10) }).await;
    let c = reqwest::Client::new();
    let tok = token(&c, &sim.base_url()).await;
    let url = format!("{}/api/v2/roles", sim.base_url());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert!(h.get("retry-after").is_none());
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(reset >= now && reset <= now + 2, "reset {reset} now {now}");
        let remaining: u64 = h["x-ratelimit-remaining"].to_str().unwrap().parse().unwrap();
        seen.push((r.status().as_u16(), remaining));
        if r.status() == 429 {
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"statusCode": 429, "error": "Too Many Requests", "message": "Global limit has been reached", "errorCode": "too_many_requests"})
            );
        }
    }
    assert_eq!(seen, vec![(200, 2), (200, 1), (200, 0), (429, 0)]);
    let st = sim.stats();
    assert_eq!(st.api_calls, 4);
    assert_eq!(st.rate_limited, 1);
    assert_eq!(st.by_endpoint["GET /api/v2/roles"], 4);
    assert_eq!(st.peak_per_second, 3);
}

#[tokio::test]
async fn export_default_fields_matches_truth() {
    let sim = start(fast(300)).await;
    let c = reqwest::Client::new();
    let tok = token(&c, &sim.base_url()).await;
    let raw = export(&c, &sim, &tok, json!({"format": "json"})).await;
    let mut got = lines(&raw);
    assert_eq!(got.len(), 300);
    got.sort_by(|a, b| a["user_id"].as_str().cmp(&b["user_id"].as_str()));
    let truth = sim.truth();
    for (line, t) in got.iter().zip(&truth) {
        let mut t = t.clone();
        let obj = t.as_object_mut().unwrap();
        for k in ["roles", "authentication_methods", "authenticators", "enrollments"] {
            obj.remove(k);
        }
        assert_eq!(line, &t);
    }
    assert!(truth.iter().any(|u| u.get("email").is_none()));
    assert!(truth.iter().any(|u| u["identities"].as_array().unwrap().len() == 2));
    assert_eq!(sim.stats().downloads, 1);
    assert_eq!(sim.stats().jobs_created, 1);
}

#[tokio::test]
async fn download_link_checks_and_faults() {
    let sim = start(fast(50)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let r = c
        .post(format!("{base}/api/v2/jobs/users-exports"))
        .bearer_auth(&tok)
        .json(&json!({"format": "json"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, j) = get(&c, &tok, format!("{base}/api/v2/jobs/{id}")).await;
    assert_eq!(j["status"], "completed");
    let loc = j["location"].as_str().unwrap().to_string();
    assert!(loc.contains(&format!("/user-exports/{id}/sim-tenant.json.gz?Expires=")));
    let status = |u: String, auth: bool| {
        let mut rb = c.get(u);
        if auth {
            rb = rb.bearer_auth(&tok);
        }
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(loc.clone(), true).await, 400);
    assert_eq!(status(format!("{loc}x"), false).await, 403);
    sim.set_faults(Faults { expire_downloads: 1, cut_downloads: 1, ..Faults::default() });
    assert_eq!(status(loc.clone(), false).await, 403);
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cut = match r.bytes().await {
        Err(_) => true,
        Ok(b) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&b[..]).read_to_end(&mut out).is_err()
        }
    };
    assert!(cut, "cut download must not yield a complete gzip");
    assert_eq!(status(loc.clone(), false).await, 200);

    // Unknown and malformed job ids.
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/jobs/job_AAAAAAAAAAAAAAAA")).await;
    assert_eq!(s, 404);
    assert_eq!(v["errorCode"], "inexistent_job");
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/jobs/nope")).await.0, 400);
}

#[tokio::test]
async fn expired_link() {
    let sim = start(Config { link_ttl: Duration::ZERO, ..fast(5) }).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let r =
        c.post(format!("{base}/api/v2/jobs/users-exports")).bearer_auth(&tok).json(&json!({})).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, j) = get(&c, &tok, format!("{base}/api/v2/jobs/{id}")).await;
    let loc = j["location"].as_str().unwrap().to_string();
    assert!(loc.contains(".csv.gz?"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.get(&loc).send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn export_fields_limit_connection_and_validation() {
    let sim = start(fast(200)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let (corp_id, _) = sim.connections().into_iter().find(|(_, n)| n == "corp").unwrap();
    let raw = export(
        &c,
        &sim,
        &tok,
        json!({"format": "json", "connection_id": corp_id, "limit": 5, "fields": [
            {"name": "user_id"},
            {"name": "identities[0].connection", "export_as": "provider"},
            {"name": "user_metadata.bio", "export_as": "bio"},
        ]}),
    )
    .await;
    let got = lines(&raw);
    assert_eq!(got.len(), 5);
    for l in &got {
        assert_eq!(l["provider"], "corp");
        assert!(l["user_id"].as_str().unwrap().starts_with("samlp|corp|"));
        for k in l.as_object().unwrap().keys() {
            assert!(["user_id", "provider", "bio"].contains(&k.as_str()));
        }
    }

    let csv = export(
        &c,
        &sim,
        &tok,
        json!({"format": "csv", "limit": 3, "fields": [{"name": "user_id", "export_as": "Id"}, {"name": "created_at"}, {"name": "logins_count"}]}),
    )
    .await;
    let csv = String::from_utf8(csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0], "\"Id\",\"created_at\",\"logins_count\"");
    assert!(rows[1].starts_with("\"'"));

    for (body, needle) in [
        (json!({"format": "json", "bogus": 1}), "bogus"),
        (json!({"format": "json", "connection_id": "con_short"}), "connection_id"),
        (json!({"format": "json", "connection_id": "con_AAAAAAAAAAAAAAAA"}), "connection_id"),
        (json!({"format": "xml"}), "format"),
        (json!({"format": "json", "limit": 0}), "limit"),
        (json!({"format": "json", "fields": [{"export_as": "x"}]}), "name"),
        (json!({"format": "json", "fields": [{"name": "a", "x": 1}]}), "fields[0]"),
        (json!({"format": "json", "fields": [{"name": "a".repeat(101)}]}), "fields[0].name"),
    ] {
        let r = c.post(format!("{base}/api/v2/jobs/users-exports")).bearer_auth(&tok).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errorCode"], "invalid_body");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.starts_with("Payload validation error: "), "{msg}");
        assert!(msg.contains(needle), "{msg} should name {needle}");
    }
}

#[tokio::test]
async fn role_member_paging() {
    let sim = start(fast(3000)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let (_, roles) = get(&c, &tok, format!("{base}/api/v2/roles?per_page=100&include_totals=true")).await;
    assert_eq!(roles["total"], 20);
    let names: Vec<&str> = roles["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"Rédacteur en chef") && names.contains(&"管理者"));
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/roles?per_page=101")).await;
    assert_eq!(s, 400);
    assert_eq!(v["message"], "Query validation error: 'Value 101 is greater than maximum 100' on property per_page (Number of results per page. Defaults to 50).");

    let truth = sim.truth();
    let mut big = None;
    for r in roles["roles"].as_array().unwrap() {
        let id = r["id"].as_str().unwrap();
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/roles/{id}/users?include_totals=true&per_page=1")).await;
        if v["total"].as_u64().unwrap() > 1000 {
            big = Some(id.to_string());
        }
    }
    let role = big.expect("a role with more than 1000 members");
    let mut expected: Vec<&str> = truth
        .iter()
        .filter(|u| u["roles"].as_array().unwrap().iter().any(|r| r["id"] == role.as_str()))
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    expected.sort();

    let mut got = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v2/roles/{role}/users?take=100&include_totals=true&per_page=50");
        if let Some(f) = &from {
            url.push_str(&format!("&from={}", f.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")));
        }
        let (s, v) = get(&c, &tok, url).await;
        assert_eq!(s, 200);
        assert!(v.get("total").is_none());
        for u in v["users"].as_array().unwrap() {
            got.push(u["user_id"].as_str().unwrap().to_string());
        }
        match v.get("next") {
            Some(n) => from = Some(n.as_str().unwrap().to_string()),
            None => break,
        }
    }
    let n = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "duplicates in checkpoint paging");
    assert_eq!(got, expected);

    let (s, v) = get(&c, &tok, format!("{base}/api/v2/roles/{role}/users?page=10&per_page=100")).await;
    assert_eq!(s, 400);
    assert_eq!(v["message"], "Requesting page 10 exceeds the allowed maximum of 1000 records. To fetch results beyond 1000, use the checkpoint pagination method.");
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/roles/{role}/users?page=9&per_page=100")).await.0, 200);
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/roles/{role}/users?take=10&from=%21%21")).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/roles/rol_AAAAAAAAAAAAAAAA/users")).await;
    assert_eq!(s, 404);
    assert_eq!(v, json!({"statusCode": 404, "error": "Not Found", "message": "The role does not exist."}));
}

#[tokio::test]
async fn user_endpoints_match_truth() {
    let sim = start(fast(400)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let truth = sim.truth();

    let (s, v) = get(&c, &tok, format!("{base}/api/v2/users/auth0%7Cnope/roles")).await;
    assert_eq!(s, 404);
    assert_eq!(
        v,
        json!({"statusCode": 404, "error": "Not Found", "message": "The user does not exist.", "errorCode": "inexistent_user"})
    );

    let empty = truth.iter().find(|u| u["authentication_methods"].as_array().unwrap().is_empty()).unwrap();
    let id = enc(empty["user_id"].as_str().unwrap());
    let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{id}/authentication-methods?include_totals=true")).await;
    assert_eq!(v, json!({"authenticators": [], "start": 0, "limit": 50}));

    let mut checked_enrollment = false;
    for u in truth.iter().filter(|u| u["authentication_methods"].as_array().unwrap().len() > 1).take(15) {
        let raw = u["user_id"].as_str().unwrap();
        let id = enc(raw);
        let (_, v) =
            get(&c, &tok, format!("{base}/api/v2/users/{id}/authentication-methods?include_totals=true&per_page=100"))
                .await;
        assert_eq!(v["authenticators"], u["authentication_methods"]);
        assert_eq!(v["total"], u["authentication_methods"].as_array().unwrap().len());
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{id}/authentication-methods")).await;
        assert_eq!(v, u["authentication_methods"]);
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{id}/authenticators")).await;
        assert_eq!(v, u["authenticators"]);
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{id}/enrollments")).await;
        assert_eq!(v, u["enrollments"]);
        checked_enrollment |= !v.as_array().unwrap().is_empty();
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{id}/roles?include_totals=true&per_page=100")).await;
        assert_eq!(v["roles"], u["roles"]);
    }
    assert!(checked_enrollment);

    // Percent-encoded SAML ids resolve; deletion turns them into 404s.
    let saml =
        truth.iter().map(|u| u["user_id"].as_str().unwrap()).find(|id| id.starts_with("samlp|")).unwrap().to_string();
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/users/{}/roles", enc(&saml))).await.0, 200);
    assert!(sim.delete_user(&saml));
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/users/{}/roles", enc(&saml))).await.0, 404);
    assert_eq!(sim.truth().len(), truth.len() - 1);
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/nothing-here")).await;
    assert_eq!(s, 404);
    assert_eq!(v["statusCode"], 404);
}

/// Top-level `(key, exact JSON text)` pairs of a JSON object line.
fn raw_pairs(line: &str) -> std::collections::BTreeMap<String, String> {
    let m: std::collections::BTreeMap<String, &serde_json::value::RawValue> = serde_json::from_str(line).unwrap();
    m.into_iter().map(|(k, v)| (k, v.get().to_string())).collect()
}

const NASTY_KEYS: [&str; 14] = [
    r#""path_win":"#,
    r#""quote_slash":"#,
    r#""emoji_escaped":"#,
    r#""lone_looking":"#,
    r#""separators":"#,
    r#""separators_raw":"#,
    r#""controls":"#,
    r#""numbers":"#,
    r#""big_id":"#,
    r#""ratio":"#,
    r#""case":"#,
    r#""we\"ird\\key\/":"#,
    r#""caf\u00e9":"#,
    r#""":"#,
];

#[tokio::test]
async fn nasty_json_export_equals_truth_text() {
    let sim = start(fast(300)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let raw = String::from_utf8(export(&c, &sim, &tok, json!({"format": "json"})).await).unwrap();
    let lines: Vec<&str> = raw.split('\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 300);
    let truth = sim.truth_lines();
    assert_eq!(truth.len(), 300);

    // Every line parses; the export line is exactly the truth line minus the enrichment keys.
    let mut by_id = std::collections::HashMap::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let id = v["user_id"].as_str().unwrap().to_string();
        assert!(!id.contains('\0') && !v["email"].as_str().unwrap_or("").contains('\0'));
        by_id.insert(id, *l);
    }
    let lossy = sim.truth();
    for (t, tv) in truth.iter().zip(&lossy) {
        let tv2: Value = serde_json::from_str(t).unwrap();
        assert_eq!(&tv2, tv);
        let id = tv["user_id"].as_str().unwrap();
        let line = by_id[id];
        assert!(t.starts_with(&line[..line.len() - 1]), "truth line must extend the export line");
        let mut tp = raw_pairs(t);
        for k in ["roles", "authentication_methods", "authenticators", "enrollments"] {
            assert!(tp.remove(k).is_some(), "{k}");
        }
        assert_eq!(raw_pairs(line), tp);
    }

    // The nasty shapes are there.
    for needle in [
        r#"\\u0000"#,
        r#""before\u0000after""#,
        r#"\/"#,
        r#"\""#,
        r#"\\"#,
        r#"\ud83d\ude00"#,
        r#"\\ud800"#,
        r#"\u2028"#,
        "\u{2028}",
        "\u{2029}",
        r#"\b\f\n\r\t\u001f"#,
        "123456789012345678901234567890",
        "18446744073709551616",
        "-9007199254740993",
        ",-0,",
        "1.5e300",
        "6.02214076E23",
        "1E-7",
        "0.1000000000000000055511151231257827",
        r#""":"empty key""#,
        r#""Key":"upper","key":"lower""#,
        r#"\u00e9"#,
        &"[{\"d\":".repeat(32),
    ] {
        assert!(raw.contains(needle), "missing {needle}");
    }
    let nul_users = lines.iter().filter(|l| l.contains(r#"\u0000after"#)).count();
    assert_eq!(nul_users, 6);
    let long = lines.iter().filter(|l| l.len() > 64 * 1024).count();
    assert!((1..=3).contains(&long), "{long} users with a 64 KiB string");
    let nasty_count = |l: &str| NASTY_KEYS.iter().filter(|k| l.contains(*k)).count();
    assert!(lines.iter().all(|l| nasty_count(l) >= 1), "every user holds some nasty JSON");
    assert!(lines.iter().filter(|l| nasty_count(l) >= 2).count() > 150, "most users hold several");
    assert!(lines.iter().any(|l| l.contains(r#""name":"#) && raw_pairs(l)["name"].contains("\\u00")));
    let v: Value = serde_json::from_str(lines.iter().find(|l| l.contains(r#"\u0000after"#)).unwrap()).unwrap();
    assert_eq!(v["user_metadata"]["nul"], "before\u{0}after");

    // /__sim/truth serves the same lines.
    let served = c.get(format!("{base}/__sim/truth")).send().await.unwrap().text().await.unwrap();
    let served: Vec<&str> = served.split('\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(served, truth.iter().map(String::as_str).collect::<Vec<_>>());

    // GET /users/{id}: exact text, fields / include_fields.
    let t = truth.iter().find(|t| t.contains("123456789012345678901234567890")).unwrap();
    let tp = raw_pairs(t);
    let id = enc(serde_json::from_str::<String>(&tp["user_id"]).unwrap().as_str());
    let user = get_text(&c, &tok, format!("{base}/api/v2/users/{id}")).await;
    let up = raw_pairs(&user);
    for (k, v) in &up {
        if let Some(tv) = tp.get(k) {
            assert_eq!(v, tv, "{k}");
        }
    }
    let some = get_text(
        &c,
        &tok,
        format!("{base}/api/v2/users/{id}?fields=user_id,app_metadata,user_metadata&include_fields=true"),
    )
    .await;
    let sp = raw_pairs(&some);
    assert!(sp.keys().all(|k| ["user_id", "app_metadata", "user_metadata"].contains(&k.as_str())), "{some}");
    assert_eq!(sp["user_id"], tp["user_id"]);
    let rest =
        get_text(&c, &tok, format!("{base}/api/v2/users/{id}?fields=app_metadata,user_metadata&include_fields=false"))
            .await;
    let rp = raw_pairs(&rest);
    assert!(!rp.contains_key("app_metadata") && !rp.contains_key("user_metadata"));
    assert_eq!(rp.len() + sp.len() - 1, up.len());

    // CSV keeps numbers verbatim.
    let csv = export(
        &c,
        &sim,
        &tok,
        json!({"format": "csv", "fields": [{"name": "user_id"}, {"name": "app_metadata.big_id"}, {"name": "user_metadata.big_id"}]}),
    )
    .await;
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.contains(",123456789012345678901234567890"), "{}", &csv[..200]);
}

#[tokio::test]
async fn enrollments_parse_in_the_sdks() {
    let sim = start(fast(500)).await;
    let mut seen = 0;
    for t in sim.truth() {
        for e in t["enrollments"].as_array().unwrap() {
            seen += 1;
            for (k, v) in e.as_object().unwrap() {
                assert!(!v.is_null(), "{k} null in {e}");
                assert!(v != "", "{k} empty in {e}");
            }
        }
    }
    assert!(seen > 10);
}

#[tokio::test]
async fn job_faults_and_outages() {
    let sim = start(fast(20)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    sim.set_faults(Faults { fail_jobs: 1, expire_jobs: 1, ..Faults::default() });
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = c
            .post(format!("{base}/api/v2/jobs/users-exports"))
            .bearer_auth(&tok)
            .json(&json!({"format": "json"}))
            .send()
            .await
            .unwrap();
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut statuses = Vec::new();
    for id in &ids {
        let (s, j) = get(&c, &tok, format!("{base}/api/v2/jobs/{id}")).await;
        assert_eq!(s, 200);
        assert_eq!(j["type"], "users_export");
        assert_eq!(j["id"], id.as_str());
        if j["status"] != "completed" {
            assert!(j.get("location").is_none(), "{j}");
        }
        statuses.push(j["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses, ["failed", "expired", "completed"]);
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/jobs/job_AAAAAAAAAAAAAAAA")).await;
    assert_eq!(s, 404);
    assert_eq!(
        v,
        json!({"statusCode": 404, "error": "Not Found", "message": "The job does not exist.", "errorCode": "inexistent_job"})
    );

    // The next N calls fail, then an outage for a while.
    sim.set_faults(Faults { fail_next_calls: 2, ..Faults::default() });
    let roles = format!("{base}/api/v2/roles");
    for _ in 0..2 {
        let (s, v) = get(&c, &tok, roles.clone()).await;
        assert_eq!(s, 503);
        assert_eq!(v["statusCode"], 503);
        assert_eq!(v["error"], "Service Unavailable");
    }
    assert_eq!(get(&c, &tok, roles.clone()).await.0, 200);
    let r = c
        .post(format!("{base}/__sim/faults"))
        .json(&json!({"outage_ms": 400}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(r["outage_ms"], 0);
    assert!(r["outage_until_ms"].as_u64().unwrap() > 0);
    assert_eq!(get(&c, &tok, roles.clone()).await.0, 503);
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/jobs/{}", ids[2])).await.0, 503);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(get(&c, &tok, roles.clone()).await.0, 200);
    assert_eq!(sim.stats().faults_injected, 4);
}

#[tokio::test]
async fn repeated_user_calls_are_counted() {
    let sim = start(fast(20)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let truth = sim.truth();
    let a = enc(truth[0]["user_id"].as_str().unwrap());
    let b = enc(truth[1]["user_id"].as_str().unwrap());
    for url in [
        format!("{base}/api/v2/users/{a}/roles"),
        format!("{base}/api/v2/users/{a}/enrollments"),
        format!("{base}/api/v2/users/{b}/roles"),
        format!("{base}/api/v2/users/auth0%7Cnope/roles"),
        format!("{base}/api/v2/users/auth0%7Cnope/roles"),
        format!("{base}/api/v2/roles"),
        format!("{base}/api/v2/roles"),
    ] {
        get(&c, &tok, url).await;
    }
    assert_eq!(sim.stats().repeated_user_calls, 0);
    get(&c, &tok, format!("{base}/api/v2/users/{a}/roles")).await;
    // The same user spelled with a raw `|` is the same user.
    get(&c, &tok, format!("{base}/api/v2/users/{}/roles", truth[0]["user_id"].as_str().unwrap().replace('|', "%7c")))
        .await;
    assert_eq!(sim.stats().repeated_user_calls, 2);
    assert_eq!(c.post(format!("{base}/__sim/stats/reset")).send().await.unwrap().status(), 204);
    get(&c, &tok, format!("{base}/api/v2/users/{a}/roles")).await;
    assert_eq!(sim.stats().repeated_user_calls, 0);
}

#[tokio::test]
async fn scopes_are_enforced() {
    let cfg = Config { scopes: vec!["read:users".into(), "read:roles".into()], ..fast(20) };
    let sim = start(cfg).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let r = c
        .post(format!("{base}/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "sim-secret", "audience": format!("{base}/api/v2/")}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["scope"], "read:users read:roles");
    let tok = v["access_token"].as_str().unwrap().to_string();
    let (_, roles) = get(&c, &tok, format!("{base}/api/v2/roles")).await;
    let role = roles[0]["id"].as_str().unwrap();
    let user = enc(sim.truth()[0]["user_id"].as_str().unwrap());
    let denied = |scope: &str| json!({"statusCode": 403, "error": "Forbidden", "message": format!("Insufficient scope, expected any of: {scope}"), "errorCode": "insufficient_scope"});
    assert_eq!(
        get(&c, &tok, format!("{base}/api/v2/roles/{role}/users?take=10")).await,
        (403, denied("read:role_members"))
    );
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/users/{user}/roles")).await, (403, denied("read:role_members")));
    assert_eq!(
        get(&c, &tok, format!("{base}/api/v2/users/{user}/authentication-methods")).await,
        (403, denied("read:authentication_methods"))
    );
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/users/{user}/enrollments")).await.0, 200);
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/users/{user}")).await.0, 200);

    let sim = start(Config { scopes: vec!["read:roles".into()], ..fast(5) }).await;
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let r = c
        .post(format!("{base}/api/v2/jobs/users-exports"))
        .bearer_auth(&tok)
        .json(&json!({"format": "json"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap(), denied("read:users"));
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/jobs/job_AAAAAAAAAAAAAAAA")).await;
    assert_eq!((s, v), (403, denied("create:users,read:users")));
}

// ---- tenant logs and mutations ----

/// `(status, Link header, body)` of an authorised GET.
async fn get_linked(c: &reqwest::Client, tok: &str, url: &str) -> (u16, Option<String>, Value) {
    let r = c.get(url).bearer_auth(tok).send().await.unwrap();
    let s = r.status().as_u16();
    let link = r.headers().get("link").map(|v| v.to_str().unwrap().to_string());
    (s, link, r.json().await.unwrap_or(Value::Null))
}

/// The URL inside `<...>; rel="next"`.
fn next_url(link: &str) -> String {
    assert!(link.ends_with(">; rel=\"next\""), "{link}");
    link.trim_start_matches('<').split('>').next().unwrap().to_string()
}

fn ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["log_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn logs_checkpoint_paging_and_retention() {
    let sim = start(fast(50)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    sim.log_noise(230);
    let all = sim.logs();
    assert!(all.len() > 250, "{}", all.len());
    let all_ids = ids(&all);
    assert!(all_ids.windows(2).all(|w| w[0] < w[1]), "log_ids strictly increase");
    assert!(all_ids.iter().all(|id| id.len() >= 24 && id.bytes().all(|b| b.is_ascii_digit())));
    // Noise of several kinds, and the exporter's own token request.
    let types: std::collections::BTreeSet<&str> = all.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert!(types.len() >= 4 && types.contains("seccft"), "{types:?}");
    for r in &all {
        for k in ["log_id", "date", "type", "description", "client_id", "ip", "details"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert!(r["date"].as_str().unwrap().ends_with('Z') && r["date"].as_str().unwrap().len() == 24);
    }

    // The newest record is the checkpoint a client starts from.
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/logs?per_page=1&sort=date:-1")).await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["log_id"], *all_ids.last().unwrap());
    let (_, v) = get(&c, &tok, format!("{base}/api/v2/logs?per_page=3&sort=date:1&include_totals=true")).await;
    assert_eq!(v["total"], all.len());
    assert_eq!(v["length"], 3);
    assert_eq!(ids(v["logs"].as_array().unwrap()), all_ids[..3]);
    let (_, v) = get(&c, &tok, format!("{base}/api/v2/logs?per_page=10&page=1")).await;
    let newest: Vec<String> = all_ids.iter().rev().skip(10).take(10).cloned().collect();
    assert_eq!(ids(v.as_array().unwrap()), newest);
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/logs?sort=name:1")).await.0, 400);

    // Checkpoint paging from a record: every later record exactly once, in order, following Link.
    let from = &all_ids[4];
    let mut url = format!("{base}/api/v2/logs?from={from}&take=100");
    let mut walked = Vec::new();
    let mut pages = 0;
    loop {
        let (s, link, v) = get_linked(&c, &tok, &url).await;
        assert_eq!(s, 200, "{v}");
        let page = v.as_array().unwrap();
        assert!(page.len() <= 100);
        let link = link.expect("a Link header on every checkpoint page");
        let next = next_url(&link);
        assert!(next.starts_with(&format!("{base}/api/v2/logs?from=")) && next.ends_with("&take=100"), "{next}");
        if page.is_empty() {
            // Caught up: the next URL is this one again.
            assert_eq!(next, url);
            break;
        }
        assert_eq!(
            next,
            format!("{base}/api/v2/logs?from={}&take=100", page.last().unwrap()["log_id"].as_str().unwrap())
        );
        walked.extend(ids(page));
        url = next;
        pages += 1;
    }
    assert_eq!(pages, (all_ids.len() - 5).div_ceil(100));
    assert_eq!(walked, all_ids[5..]);
    // `take` alone starts at the oldest retained record; other parameters are ignored.
    let (_, link, v) = get_linked(&c, &tok, &format!("{base}/api/v2/logs?take=7&per_page=1&sort=date:-1")).await;
    assert_eq!(ids(v.as_array().unwrap()), all_ids[..7]);
    assert!(link.unwrap().contains(&format!("from={}&take=7", all_ids[6])));
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/logs?from={from}&take=101")).await.0, 400);
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/logs?from={from}&take=0")).await.0, 400);

    // One record by id; unknown ids.
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/logs/{}", all_ids[9])).await;
    assert_eq!(s, 200);
    assert_eq!(v, all[9]);
    let unknown = format!("901{}", &all_ids[0][3..]);
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/logs/{unknown}")).await;
    assert_eq!(s, 404);
    assert_eq!(v["statusCode"], 404);
    assert_eq!(v["error"], "Not Found");
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/logs?from={unknown}&take=10")).await;
    assert_eq!(s, 400);
    assert_eq!(v["errorCode"], "invalid_query_string");
    assert!(v["message"].as_str().unwrap().contains("invalid"), "{v}");

    // Retention: aged past it, old checkpoints answer 400 and their records 404.
    sim.age_logs(86_400 + 60);
    sim.log_noise(3);
    let (s, v) = get(&c, &tok, format!("{base}/api/v2/logs?from={}&take=10", all_ids.last().unwrap())).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["statusCode"], 400);
    assert_eq!(v["error"], "Bad Request");
    assert_eq!(v["errorCode"], "invalid_query_string");
    assert!(v["message"].as_str().unwrap().contains("too old"), "{v}");
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/logs/{}", all_ids[9])).await.0, 404);
    let fresh = sim.logs();
    assert_eq!(fresh.len(), 3);
    assert!(fresh[0]["log_id"].as_str().unwrap() > all_ids.last().unwrap().as_str());
    let (_, v) = get(&c, &tok, format!("{base}/api/v2/logs?take=100")).await;
    assert_eq!(v, Value::Array(fresh.clone()));
    // Aging less than the retention keeps records.
    sim.age_logs(3600);
    assert_eq!(sim.logs().len(), 3);

    assert!(sim.stats().by_endpoint["GET /api/v2/logs"] > 5);
    assert_eq!(sim.stats().by_endpoint["GET /api/v2/logs/{id}"], 3);

    // The scope.
    let limited = start(Config { scopes: vec!["read:users".into()], ..fast(5) }).await;
    let tok = token(&c, &limited.base_url()).await;
    let (s, v) = get(&c, &tok, format!("{}/api/v2/logs?take=1", limited.base_url())).await;
    assert_eq!((s, v["errorCode"].as_str()), (403, Some("insufficient_scope")));
}

/// Records written since `before` (a count of `sim.logs()`), skipping unrelated noise.
fn new_records(sim: &Sim, before: usize) -> Vec<Value> {
    const NOISE: [&str; 5] = ["s", "seacft", "fp", "slo", "seccft"];
    sim.logs()[before..].iter().filter(|r| !NOISE.contains(&r["type"].as_str().unwrap())).cloned().collect()
}

fn truth_of(sim: &Sim, id: &str) -> Option<Value> {
    sim.truth().into_iter().find(|u| u["user_id"] == id)
}

/// Asserts the export (default fields, JSON) equals the truth minus enrichment, exactly as text.
async fn export_equals_truth(c: &reqwest::Client, sim: &Sim, tok: &str) -> usize {
    let raw = String::from_utf8(export(c, sim, tok, json!({"format": "json"})).await).unwrap();
    let mut lines: Vec<&str> = raw.split('\n').filter(|l| !l.is_empty()).collect();
    let id_of = |l: &str| serde_json::from_str::<Value>(l).unwrap()["user_id"].as_str().unwrap().to_string();
    lines.sort_by_key(|l| id_of(l));
    let truth = sim.truth_lines();
    assert_eq!(lines.len(), truth.len());
    for (line, t) in lines.iter().zip(&truth) {
        let mut tp = raw_pairs(t);
        for k in ["roles", "authentication_methods", "authenticators", "enrollments"] {
            tp.remove(k);
        }
        assert_eq!(raw_pairs(line), tp, "{}", id_of(line));
    }
    lines.len()
}

#[tokio::test]
async fn mutations_show_everywhere_and_log() {
    use auth0_sim::Via;
    let sim = start(fast(300)).await;
    let c = reqwest::Client::new();
    let base = sim.base_url();
    let tok = token(&c, &base).await;
    let truth = sim.truth();
    let uid = |pred: &dyn Fn(&Value) -> bool| -> String {
        truth.iter().find(|u| pred(u)).unwrap()["user_id"].as_str().unwrap().to_string()
    };
    let views = |id: String| {
        let (c, tok, base) = (c.clone(), tok.clone(), base.clone());
        async move {
            let e = enc(&id);
            let mut out = Vec::new();
            for p in ["authentication-methods", "authenticators", "enrollments", "roles"] {
                let (s, v) = get(&c, &tok, format!("{base}/api/v2/users/{e}/{p}")).await;
                assert_eq!(s, 200, "{p} {v}");
                out.push(v);
            }
            out
        }
    };
    // Per-user endpoints == truth for this user.
    let check = |id: String| {
        let views = views(id.clone());
        let t = truth_of(&sim, &id).unwrap();
        async move {
            let v = views.await;
            assert_eq!(v[0], t["authentication_methods"]);
            assert_eq!(v[1], t["authenticators"]);
            assert_eq!(v[2], t["enrollments"]);
            assert_eq!(v[3], t["roles"]);
            t
        }
    };

    // 1. Enrol: gd_enrollment_complete with the user; the factor everywhere; multifactor set.
    let plain = uid(&|u| u["authentication_methods"].as_array().unwrap().iter().all(|m| m["type"] == "password"));
    let n = sim.logs().len();
    let mid = sim.enroll_mfa(&plain, "totp", Via::User).unwrap();
    let recs = new_records(&sim, n);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["type"], "gd_enrollment_complete");
    assert_eq!(recs[0]["user_id"], plain.as_str());
    assert_eq!(recs[0]["details"]["authenticator"]["id"], mid.as_str());
    assert_eq!(recs[0]["details"]["enrollment"]["user_id"], plain.as_str());
    let t = check(plain.clone()).await;
    let m = t["authentication_methods"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str(), &m["confirmed"]),
        (Some(mid.as_str()), Some("totp"), &json!(true))
    );
    assert_eq!(t["enrollments"][0]["id"], mid.split_once('|').unwrap().1);
    assert_eq!(t["multifactor"], json!(["guardian"]));
    assert!(t["multifactor_last_modified"].as_str().unwrap() > "2025");
    // Via the Management API: sapi, the user only in the path. Over HTTP this time.
    let n = sim.logs().len();
    let r = c
        .post(format!("{base}/__sim/users/{}/mfa", enc(&plain)))
        .json(&json!({"type": "phone", "via": "management_api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let phone = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["type"], "sapi");
    assert!(recs[0].get("user_id").is_none());
    let req = &recs[0]["details"]["request"];
    assert_eq!(req["method"], "post");
    assert_eq!(req["path"], format!("/api/v2/users/{}/authentication-methods", enc(&plain)));
    assert_eq!(req["channel"], "https://manage.auth0.com/");
    assert_eq!(recs[0]["details"]["response"]["statusCode"], 201);
    assert_eq!(recs[0]["details"]["response"]["body"]["id"], phone.as_str());
    check(plain.clone()).await;

    // 3. Rename: gd_update_device_account, then the My Account API record.
    let n = sim.logs().len();
    assert_eq!(sim.rename_mfa(&plain, Some(&phone), Some("Work \"phone\""), Via::User).unwrap(), phone);
    sim.rename_mfa(&plain, Some(&mid), None, Via::MyAccount).unwrap();
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["type"], "gd_update_device_account");
    assert_eq!(recs[0]["user_id"], plain.as_str());
    assert_eq!(recs[1]["type"], "my_account_authentication_method_succeeded");
    assert_eq!(recs[1]["user_id"], plain.as_str());
    assert_eq!(recs[1]["details"]["authentication_method_id"], mid.as_str());
    assert_eq!(recs[1]["details"]["request"]["method"], "patch");
    let t = check(plain.clone()).await;
    let named = t["authentication_methods"].as_array().unwrap().iter().find(|m| m["id"] == phone.as_str()).unwrap();
    assert_eq!(named["name"], "Work \"phone\"");

    // 2. Remove: through the Guardian enrollment (no user in the path), the user's own flow, the API.
    let enrollment = t["enrollments"][0]["id"].as_str().unwrap().to_string();
    let n = sim.logs().len();
    let removed = sim.remove_mfa(&plain, None, Via::GuardianEnrollment).unwrap();
    assert_eq!(removed.split_once('|').unwrap().1, enrollment);
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["details"]["request"]["method"], "delete");
    assert_eq!(recs[0]["details"]["request"]["path"], format!("/api/v2/guardian/enrollments/{enrollment}"));
    assert!(recs[0].get("user_id").is_none());
    check(plain.clone()).await;
    let n = sim.logs().len();
    let r = c
        .post(format!("{base}/__sim/users/{}/mfa/remove", enc(&plain)))
        .json(&json!({"via": "management_api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let gone = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let recs = new_records(&sim, n);
    assert_eq!(
        recs[0]["details"]["request"]["path"],
        format!("/api/v2/users/{}/authentication-methods/{}", enc(&plain), gone.replace('|', "%7C"))
    );
    assert_eq!(recs[0]["details"]["response"]["statusCode"], 204);
    let t = check(plain.clone()).await;
    assert!(t["authentication_methods"].as_array().unwrap().iter().all(|m| m["type"] == "password"));
    assert!(t.get("multifactor").is_none(), "no factor left");
    assert_eq!(sim.remove_mfa(&plain, None, Via::User).unwrap_err().to_string(), "the user has no MFA factor");
    let with_mfa = uid(&|u| u["authenticators"].as_array().unwrap().iter().any(|m| m["confirmed"] == true));
    let n = sim.logs().len();
    sim.remove_mfa(&with_mfa, None, Via::User).unwrap();
    let recs = new_records(&sim, n);
    assert_eq!((recs[0]["type"].as_str(), recs[0]["user_id"].as_str()), (Some("gd_unenroll"), Some(with_mfa.as_str())));
    check(with_mfa.clone()).await;

    // 4. Roles: assigned through the user, then the role side; removed; members follow.
    let (_, roles) = get(&c, &tok, format!("{base}/api/v2/roles?per_page=100")).await;
    let role = roles[3]["id"].as_str().unwrap().to_string();
    let members = |role: String| {
        let (c, tok, base) = (c.clone(), tok.clone(), base.clone());
        async move {
            let mut out = Vec::new();
            let mut from: Option<String> = None;
            loop {
                let mut url = format!("{base}/api/v2/roles/{role}/users?take=100");
                if let Some(f) = &from {
                    url.push_str(&format!("&from={}", f.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")));
                }
                let (_, v) = get(&c, &tok, url).await;
                out.extend(v["users"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap().to_string()));
                match v.get("next") {
                    Some(n) => from = Some(n.as_str().unwrap().to_string()),
                    None => break,
                }
            }
            let (_, v) =
                get(&c, &tok, format!("{base}/api/v2/roles/{role}/users?include_totals=true&per_page=100")).await;
            assert_eq!(v["total"], out.len());
            out
        }
    };
    let before = members(role.clone()).await;
    let outsider = uid(&|u| u["roles"].as_array().unwrap().iter().all(|r| r["id"] != role.as_str()));
    let insider = before[0].clone();
    let n = sim.logs().len();
    sim.assign_role(&outsider, &role, Via::ManagementApi).unwrap();
    let r = c
        .post(format!("{base}/__sim/users/{}/roles/remove", enc(&insider)))
        .json(&json!({"role_id": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["details"]["request"]["method"], "post");
    assert_eq!(recs[0]["details"]["request"]["path"], format!("/api/v2/users/{}/roles", enc(&outsider)));
    assert_eq!(recs[0]["details"]["request"]["body"], json!({"roles": [role]}));
    assert_eq!(recs[1]["details"]["request"]["method"], "delete");
    assert_eq!(recs[1]["details"]["request"]["path"], format!("/api/v2/users/{}/roles", enc(&insider)));
    let after = members(role.clone()).await;
    assert_eq!(after.len(), before.len());
    assert!(after.contains(&outsider) && !after.contains(&insider));
    assert_eq!(after.last().unwrap(), &outsider, "newest assignment last");
    let t = check(outsider.clone()).await;
    let names: Vec<&str> = t["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.windows(2).all(|w| w[0] <= w[1]), "roles sorted by name");
    check(insider.clone()).await;
    // Back in through the role side; an unchanged role is refused.
    let n = sim.logs().len();
    sim.assign_role(&insider, &role, Via::Role).unwrap();
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["details"]["request"]["path"], format!("/api/v2/roles/{role}/users"));
    assert_eq!(recs[0]["details"]["request"]["body"], json!({"users": [insider]}));
    assert!(members(role.clone()).await.contains(&insider));
    assert!(sim.assign_role(&insider, &role, Via::ManagementApi).is_err());
    assert!(sim.remove_role(&plain, "rol_AAAAAAAAAAAAAAAA").is_err());

    // 6. Profile edit: fields replaced, metadata merged (other members kept verbatim), updated_at now.
    let victim = uid(&|u| u["user_metadata"].as_object().is_some_and(|m| m.contains_key("big_id")));
    let old = sim.truth_lines().into_iter().find(|l| l.contains(&format!("\"user_id\":{}", json!(victim)))).unwrap();
    let old_meta = raw_pairs(&old)["user_metadata"].clone();
    let n = sim.logs().len();
    let patch = json!({"name": "Zoë \"Z\" O'Hara", "user_metadata": {"theme": null, "added": [1, "two"]}});
    let r = c.post(format!("{base}/__sim/users/{}/profile", enc(&victim))).json(&patch).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["details"]["request"]["method"], "patch");
    assert_eq!(recs[0]["details"]["request"]["path"], format!("/api/v2/users/{}", enc(&victim)));
    assert_eq!(recs[0]["details"]["request"]["body"], patch);
    let new = sim.truth_lines().into_iter().find(|l| l.contains(&format!("\"user_id\":{}", json!(victim)))).unwrap();
    let new_meta = raw_pairs(&new)["user_metadata"].clone();
    assert!(
        new_meta.contains(":123456789012345678901234567890") && old_meta.contains(":123456789012345678901234567890")
    );
    assert!(new_meta.ends_with(r#""added":[1,"two"]}"#), "{new_meta}");
    let t = truth_of(&sim, &victim).unwrap();
    assert_eq!(t["name"], "Zoë \"Z\" O'Hara");
    assert!(t["user_metadata"].get("theme").is_none());
    assert!(t["updated_at"].as_str().unwrap() > "2025");
    let (_, u) = get(&c, &tok, format!("{base}/api/v2/users/{}", enc(&victim))).await;
    assert_eq!(u["name"], t["name"]);
    assert!(sim.update_profile(&victim, &serde_json::Map::new()).is_err());
    assert!(sim.update_profile(&victim, json!({"user_id": "x"}).as_object().unwrap()).is_err());

    // 5. Delete and add.
    let n = sim.logs().len();
    assert!(sim.delete_user(&with_mfa));
    let added = sim.add_user(Via::User).unwrap();
    let r = c.post(format!("{base}/__sim/users")).json(&json!({"via": "management_api"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let added2 = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().to_string();
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["details"]["request"]["path"], format!("/api/v2/users/{}", enc(&with_mfa)));
    assert_eq!(recs[0]["details"]["request"]["method"], "delete");
    assert_eq!((recs[1]["type"].as_str(), recs[1]["user_id"].as_str()), (Some("ss"), Some(added.as_str())));
    assert_eq!(recs[2]["details"]["request"]["path"], "/api/v2/users");
    assert_eq!(recs[2]["details"]["response"]["body"]["user_id"], added2.as_str());
    assert_eq!(get(&c, &tok, format!("{base}/api/v2/users/{}/roles", enc(&with_mfa))).await.0, 404);
    for id in [&added, &added2] {
        assert!(id.starts_with("auth0|") && truth.iter().all(|u| u["user_id"] != id.as_str()));
        let t = check(id.clone()).await;
        assert_eq!(t["roles"], json!([]));
        assert_eq!(t["logins_count"], 0);
        assert!(t["created_at"].as_str().unwrap() > "2025" && t.get("last_login").is_none());
        assert_eq!(get(&c, &tok, format!("{base}/api/v2/users/{}", enc(id))).await.0, 200);
    }
    sim.enroll_mfa(&added, "push", Via::MyAccount).unwrap();
    sim.assign_role(&added, &role, Via::ManagementApi).unwrap();
    assert!(members(role.clone()).await.contains(&added));
    check(added.clone()).await;

    // 7. Tenant-wide: an MFA policy change and a bulk import (whose records name no user).
    let n = sim.logs().len();
    sim.set_mfa_factor("sms", false).unwrap();
    let imported = sim.import_users(3).unwrap();
    let recs = new_records(&sim, n);
    assert_eq!(recs[0]["details"]["request"]["method"], "put");
    assert_eq!(recs[0]["details"]["request"]["path"], "/api/v2/guardian/factors/sms");
    assert_eq!(recs[1]["details"]["request"]["path"], "/api/v2/jobs/users-imports");
    assert_eq!(recs[2]["type"], "sui");
    assert!(imported.iter().all(|id| recs.iter().all(|r| !r.to_string().contains(id.as_str()))));
    let r = c.post(format!("{base}/__sim/import")).json(&json!({"users": 2})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["user_ids"].as_array().unwrap().len(), 2);
    assert!(sim.set_mfa_factor("carrier-pigeon", true).is_err());

    // The export job file and the truth agree on every user, exactly.
    let lines = export_equals_truth(&c, &sim, &tok).await;
    assert_eq!(lines, 300 - 1 + 2 + 3 + 2);
    let served = c.get(format!("{base}/__sim/truth")).send().await.unwrap().text().await.unwrap();
    assert_eq!(served.lines().collect::<Vec<_>>(), sim.truth_lines());
    // Unknown users and bad bodies over HTTP.
    let r = c.post(format!("{base}/__sim/users/auth0%7Cnope/mfa")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r =
        c.post(format!("{base}/__sim/users/{}/mfa", enc(&added))).json(&json!({"via": "fax"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn mutate_random_is_deterministic_and_exact() {
    let a = start(fast(2000)).await;
    let b = start(fast(2000)).await;
    let before = a.truth();
    let n = a.logs().len();
    let ma = a.mutate_random(0.05, 7);
    let mb = b.mutate_random(0.05, 7);
    assert_eq!(ma, mb, "same seed, same calls: same changes");
    for (kind, list) in [
        ("added", &ma.added),
        ("deleted", &ma.deleted),
        ("fields", &ma.fields_changed),
        ("mfa", &ma.mfa_changed),
        ("roles", &ma.roles_changed),
    ] {
        assert!(list.len() >= 3, "{kind}: {list:?}");
        assert!(list.windows(2).all(|w| w[0] < w[1]), "{kind} sorted");
    }
    let changed = ma.changed();
    assert!((60..=150).contains(&(changed.len() - ma.added.len())), "{}", changed.len());
    assert_eq!(a.truth().len(), before.len() + ma.added.len() - ma.deleted.len());
    let ta: Vec<Value> = a.truth().iter().map(|u| u["user_id"].clone()).collect();
    let tb: Vec<Value> = b.truth().iter().map(|u| u["user_id"].clone()).collect();
    assert_eq!(ta, tb);
    // Untouched users are exactly as before.
    let after: std::collections::HashMap<String, Value> =
        a.truth().into_iter().map(|u| (u["user_id"].as_str().unwrap().to_string(), u)).collect();
    for u in &before {
        let id = u["user_id"].as_str().unwrap();
        if !changed.iter().any(|c| c == id) {
            assert_eq!(&after[id], u);
        }
    }

    // Every change can be traced from the logs to its user: user_id, the path, a body, or (for a
    // Guardian enrollment) the enrollment id the user had.
    let enrollment_owner: std::collections::HashMap<String, String> = before
        .iter()
        .flat_map(|u| {
            u["enrollments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["id"].as_str().unwrap().to_string(), u["user_id"].as_str().unwrap().to_string()))
        })
        .collect();
    let mut traced = std::collections::BTreeSet::new();
    let mut by_enrollment = 0;
    for r in &a.logs()[n..] {
        if ["s", "seacft", "fp", "slo", "seccft"].contains(&r["type"].as_str().unwrap()) {
            continue;
        }
        if let Some(u) = r["user_id"].as_str() {
            traced.insert(u.to_string());
        }
        let path = r["details"]["request"]["path"].as_str().unwrap_or_default();
        if let Some(e) = path.strip_prefix("/api/v2/guardian/enrollments/") {
            traced.insert(enrollment_owner[e].clone());
            by_enrollment += 1;
        }
        if let Some(u) = r["details"]["response"]["body"]["user_id"].as_str() {
            traced.insert(u.to_string());
        }
        for u in r["details"]["request"]["body"]["users"].as_array().into_iter().flatten() {
            traced.insert(u.as_str().unwrap().to_string());
        }
        for id in &changed {
            if path.starts_with(&format!("/api/v2/users/{}", enc(id))) {
                traced.insert(id.clone());
            }
        }
    }
    for id in &changed {
        assert!(traced.contains(id), "{id} changed but no record names it");
    }
    assert!(by_enrollment > 0, "some factor removed through its Guardian enrollment");

    // The export after the changes equals the truth; the per-user views of changed users too.
    let c = reqwest::Client::new();
    let tok = token(&c, &a.base_url()).await;
    export_equals_truth(&c, &a, &tok).await;
    for id in ma.mfa_changed.iter().chain(&ma.roles_changed).chain(&ma.added).take(40) {
        let t = &after[id.as_str()];
        let e = enc(id);
        let base = a.base_url();
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{e}/authentication-methods")).await;
        assert_eq!(&v, &t["authentication_methods"]);
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{e}/enrollments")).await;
        assert_eq!(&v, &t["enrollments"]);
        let (_, v) = get(&c, &tok, format!("{base}/api/v2/users/{e}/roles")).await;
        assert_eq!(&v, &t["roles"]);
    }
    for id in &ma.deleted {
        assert_eq!(get(&c, &tok, format!("{}/api/v2/users/{}", a.base_url(), enc(id))).await.0, 404);
    }

    // Over HTTP: the same kind of answer.
    let r =
        c.post(format!("{}/__sim/mutate", b.base_url())).json(&json!({"share": 0.01, "seed": 3})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m: auth0_sim::Mutations = r.json().await.unwrap();
    assert!(!m.changed().is_empty());
}
