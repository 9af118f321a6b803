//! Test-only changes between two exports. Each one changes every view at once (export file, per-user
//! endpoints, role members, truth) and writes the log record(s) Auth0 would write for it.
//!
//! Values come from a random stream per mutation (seeded by the tenant seed and a mutation counter),
//! so the same calls on the same seed give the same users, ids and values; dates are the wall clock.

use serde_json::{json, Map, Value};

use crate::config::unix_ms;
use crate::data::{self, iso_ms, Rng};
use crate::overlay::Overlay;
use crate::records::{self, enc};
use crate::{lock, logs, AppState};

/// Salt of the mutation value streams.
const SALT_MUTATION: u64 = 0x3d;

/// Which path a change takes, hence which log record it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The user's own flow: Guardian (`gd_*`) or signup (`ss`) records, with `user_id` set.
    User,
    /// The Management API (`sapi`): the user is in the request path, `user_id` is absent.
    ManagementApi,
    /// The My Account API (`my_account_authentication_method_succeeded`, `user_id` set).
    MyAccount,
    /// `DELETE /api/v2/guardian/enrollments/{id}` (`sapi`): the user only through the enrollment id.
    GuardianEnrollment,
    /// `POST /api/v2/roles/{id}/users` (`sapi`): the user only in the body.
    Role,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MutationError {
    UnknownUser(String),
    UnknownRole(String),
    /// The change does not apply (no such factor, role already held, a `Via` the change has not, ...).
    Invalid(String),
}

impl std::fmt::Display for MutationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MutationError::UnknownUser(id) => write!(f, "unknown or deleted user {id}"),
            MutationError::UnknownRole(id) => write!(f, "unknown role {id}"),
            MutationError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for MutationError {}

type Result<T> = std::result::Result<T, MutationError>;

fn invalid<T>(why: impl Into<String>) -> Result<T> {
    Err(MutationError::Invalid(why.into()))
}

/// User ids per kind of change made by [`crate::Sim::mutate_random`], each sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Mutations {
    /// New users (`ss` or `sapi POST /api/v2/users`).
    pub added: Vec<String>,
    /// Deleted users (`sapi DELETE /api/v2/users/{id}`).
    pub deleted: Vec<String>,
    /// Profile edits (`sapi PATCH /api/v2/users/{id}`): export fields and `updated_at`.
    pub fields_changed: Vec<String>,
    /// MFA factors enrolled, removed or renamed (every MFA view; an enrolment or removal also sets
    /// `multifactor_last_modified` and maybe `multifactor` in the profile).
    pub mfa_changed: Vec<String>,
    /// A role assigned or removed (`/users/{id}/roles` and the role's members).
    pub roles_changed: Vec<String>,
}

impl Mutations {
    /// Every user whose data changed (added, deleted or edited), sorted, once each.
    pub fn changed(&self) -> Vec<String> {
        let mut all: Vec<String> =
            [&self.added, &self.deleted, &self.fields_changed, &self.mfa_changed, &self.roles_changed]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// One change in progress: the tenant state and the log, both locked (overlay first, then log), so a
/// reader who sees the record also sees the change.
struct Cx<'a> {
    st: &'a AppState,
    o: &'a mut Overlay,
    logs: &'a mut logs::Store,
    now: i64,
}

fn with<T>(st: &AppState, f: impl FnOnce(&mut Cx) -> T) -> T {
    let mut guard = st.overlay.write().unwrap_or_else(|e| e.into_inner());
    let o = std::sync::Arc::make_mut(&mut guard);
    let mut logs = lock(&st.logs);
    let mut cx = Cx { st, o, logs: &mut logs, now: unix_ms() as i64 };
    f(&mut cx)
}

impl Cx<'_> {
    /// The next mutation's value stream.
    fn rng(&mut self) -> Rng {
        self.o.seq += 1;
        Rng::stream(self.st.cfg.seed, self.o.seq, SALT_MUTATION)
    }

    fn log(&mut self, body: Map<String, Value>) {
        self.logs.push(self.now, body);
    }

    /// Sometimes an unrelated record after the change, so clients must filter by type.
    fn maybe_noise(&mut self, rng: &mut Rng) {
        if rng.chance(0.3) {
            let rec = records::noise(self.st, self.o, rng);
            self.log(rec);
        }
    }

    fn user_record(&self, idx: u32, ty: &str, description: &str, rng: &mut Rng) -> Map<String, Value> {
        records::user_record(self.st, self.o, idx, ty, description, rng)
    }

    fn live(&self, user_id: &str) -> Result<u32> {
        self.o.live_index(&self.st.tenant, user_id).ok_or_else(|| MutationError::UnknownUser(user_id.to_string()))
    }

    fn uid(&self, idx: u32) -> String {
        self.o.user_id(&self.st.tenant, idx).to_string()
    }

    fn methods(&self, idx: u32) -> Vec<Value> {
        self.o.methods(&self.st.tenant, idx)
    }

    /// `multifactor` (and when it changed) follow the confirmed MFA factors.
    fn sync_multifactor(&mut self, idx: u32) {
        let any = self.methods(idx).iter().any(|m| m["confirmed"] == true && m["type"] != "password");
        let has = self.o.user_raw(&self.st.tenant, idx).iter().any(|(k, _)| k == "multifactor");
        if any && !has {
            self.o.set_field(idx, "multifactor", Some(r#"["guardian"]"#.into()));
        } else if !any && has {
            self.o.set_field(idx, "multifactor", None);
        }
        self.o.set_field(idx, "multifactor_last_modified", Some(json!(iso_ms(self.now)).to_string()));
    }

    fn enroll(&mut self, idx: u32, ty: &str, via: Via) -> Result<String> {
        if !data::MFA_TYPES.contains(&ty) {
            return invalid(format!("unknown factor type {ty:?}; one of {:?}", data::MFA_TYPES));
        }
        if !matches!(via, Via::User | Via::ManagementApi | Via::MyAccount) {
            return invalid(format!("an enrolment goes via user, management_api or my_account, not {via:?}"));
        }
        let mut rng = self.rng();
        let mut m = data::method(&mut rng, ty, true, self.now - 20_000, &self.st.tenant.tenant);
        // Enrolled just now: it has not been used yet.
        if let Some(o) = m.as_object_mut() {
            o.remove("last_auth_at");
        }
        let id = m["id"].as_str().unwrap_or_default().to_string();
        let mut methods = self.methods(idx);
        methods.push(m.clone());
        self.o.set_methods(idx, methods);
        self.sync_multifactor(idx);
        let uid = self.uid(idx);
        let rec = match via {
            Via::User => {
                let mut r = self.user_record(idx, "gd_enrollment_complete", "Guardian - Enrollment complete", &mut rng);
                r.insert("details".into(), records::guardian_details(self.st, &uid, &m));
                r
            }
            Via::ManagementApi => {
                let mut body = json!({"type": ty});
                if let Some(name) = m.get("name") {
                    body["name"] = name.clone();
                }
                records::sapi(
                    "Create an authentication method",
                    "post",
                    &format!("/api/v2/users/{}/authentication-methods", enc(&uid)),
                    body,
                    201,
                    json!({"id": id, "type": ty, "created_at": m["created_at"]}),
                )
            }
            _ => self.my_account(idx, "create", "post", "/me/v1/authentication-methods", &m, &mut rng),
        };
        self.log(rec);
        self.maybe_noise(&mut rng);
        Ok(id)
    }

    /// `my_account_authentication_method_succeeded`.
    fn my_account(&self, idx: u32, op: &str, method: &str, path: &str, m: &Value, rng: &mut Rng) -> Map<String, Value> {
        let mut r = self.user_record(
            idx,
            "my_account_authentication_method_succeeded",
            "Successful authentication method operation in My Account API",
            rng,
        );
        // [UNVERIFIED] the `operation` words; the schema only says it is a string.
        r.insert(
            "details".into(),
            json!({
                "operation": op,
                "authentication_method": m["type"],
                "authentication_method_id": m["id"],
                "request": {"method": method, "path": path},
            }),
        );
        r
    }

    /// Position of the method to remove or rename: the one named, else the latest confirmed MFA factor.
    fn pick_method(&self, methods: &[Value], method_id: Option<&str>) -> Result<usize> {
        let mfa = |m: &Value| m["type"] != "password";
        match method_id {
            Some(id) => match methods.iter().position(|m| m["id"] == id) {
                Some(p) if mfa(&methods[p]) => Ok(p),
                Some(_) => invalid("the password is not an MFA factor"),
                None => invalid(format!("the user has no authentication method {id}")),
            },
            None => methods
                .iter()
                .rposition(|m| mfa(m) && m["confirmed"] == true)
                .or_else(|| methods.iter().rposition(mfa))
                .map_or_else(|| invalid("the user has no MFA factor"), Ok),
        }
    }

    fn remove_factor(&mut self, idx: u32, method_id: Option<&str>, via: Via) -> Result<String> {
        if via == Via::Role {
            return invalid("a factor is removed via user, management_api, guardian_enrollment or my_account");
        }
        let mut methods = self.methods(idx);
        let pos = if via == Via::GuardianEnrollment {
            // The one GET /users/{id}/enrollments shows (see `data::enrollments`).
            let Some(p) = methods
                .iter()
                .position(|m| m["confirmed"] == true && matches!(m["type"].as_str(), Some("push" | "phone" | "totp")))
            else {
                return invalid("the user has no Guardian enrollment");
            };
            if method_id.is_some_and(|id| methods[p]["id"] != id) {
                return invalid("only the user's Guardian enrollment can be removed via guardian_enrollment");
            }
            p
        } else {
            self.pick_method(&methods, method_id)?
        };
        let m = methods.remove(pos);
        self.o.set_methods(idx, methods);
        self.sync_multifactor(idx);
        let id = m["id"].as_str().unwrap_or_default().to_string();
        let uid = self.uid(idx);
        let mut rng = self.rng();
        let rec = match via {
            Via::User => {
                let mut r = self.user_record(idx, "gd_unenroll", "Guardian - Unenroll device account", &mut rng);
                r.insert("details".into(), records::guardian_details(self.st, &uid, &m));
                r
            }
            Via::ManagementApi => records::sapi(
                "Delete an authentication method",
                "delete",
                &format!("/api/v2/users/{}/authentication-methods/{}", enc(&uid), enc(&id)),
                json!({}),
                204,
                json!({}),
            ),
            Via::GuardianEnrollment => {
                let device = id.split_once('|').map_or(id.as_str(), |x| x.1);
                records::sapi(
                    "Delete a multi-factor authentication enrollment",
                    "delete",
                    &format!("/api/v2/guardian/enrollments/{}", enc(device)),
                    json!({}),
                    204,
                    json!({}),
                )
            }
            _ => {
                let path = format!("/me/v1/authentication-methods/{}", enc(&id));
                self.my_account(idx, "delete", "delete", &path, &m, &mut rng)
            }
        };
        self.log(rec);
        self.maybe_noise(&mut rng);
        Ok(id)
    }

    fn rename_factor(&mut self, idx: u32, method_id: Option<&str>, name: Option<&str>, via: Via) -> Result<String> {
        if !matches!(via, Via::User | Via::ManagementApi | Via::MyAccount) {
            return invalid("a factor is renamed via user, management_api or my_account");
        }
        let mut methods = self.methods(idx);
        let pos = self.pick_method(&methods, method_id)?;
        let mut rng = self.rng();
        const NAMES: [&str; 4] = ["iPhone 15 de José", "Pixel 9 \"work\"", "YubiKey 5C, backup", "Authy 🔐"];
        let name = name.map_or_else(|| rng.pick(&NAMES).to_string(), str::to_string);
        methods[pos]["name"] = json!(name);
        let m = methods[pos].clone();
        self.o.set_methods(idx, methods);
        let id = m["id"].as_str().unwrap_or_default().to_string();
        let uid = self.uid(idx);
        let rec = match via {
            Via::User => {
                let mut r =
                    self.user_record(idx, "gd_update_device_account", "Guardian - Updated device account", &mut rng);
                r.insert("details".into(), records::guardian_details(self.st, &uid, &m));
                r
            }
            Via::ManagementApi => records::sapi(
                "Update an authentication method",
                "patch",
                &format!("/api/v2/users/{}/authentication-methods/{}", enc(&uid), enc(&id)),
                json!({"name": name}),
                200,
                json!({}),
            ),
            _ => {
                let path = format!("/me/v1/authentication-methods/{}", enc(&id));
                self.my_account(idx, "update", "patch", &path, &m, &mut rng)
            }
        };
        self.log(rec);
        self.maybe_noise(&mut rng);
        Ok(id)
    }

    fn role(&mut self, idx: u32, role: u32, on: bool, via: Via) -> Result<()> {
        let has = self.o.role_indexes(&self.st.tenant, idx).contains(&role);
        let role_id = self.st.tenant.roles[role as usize].id.clone();
        match (on, has, via) {
            (true, true, _) => return invalid(format!("the user already has role {role_id}")),
            (false, false, _) => return invalid(format!("the user does not have role {role_id}")),
            (_, _, Via::ManagementApi) | (true, _, Via::Role) => {}
            _ => return invalid("roles are assigned via management_api or role, removed via management_api"),
        }
        self.o.set_role(&self.st.tenant, idx, role, on, self.now);
        let uid = self.uid(idx);
        let rec = if via == Via::Role {
            // [UNVERIFIED] response status of the role-side assignment.
            records::sapi(
                "Assign users to a role",
                "post",
                &format!("/api/v2/roles/{}/users", enc(&role_id)),
                json!({"users": [uid]}),
                200,
                json!({}),
            )
        } else {
            let (description, method) =
                if on { ("Assign roles to a user", "post") } else { ("Removes roles from a user", "delete") };
            records::sapi(
                description,
                method,
                &format!("/api/v2/users/{}/roles", enc(&uid)),
                json!({"roles": [role_id]}),
                204,
                json!({}),
            )
        };
        self.log(rec);
        let mut rng = self.rng();
        self.maybe_noise(&mut rng);
        Ok(())
    }

    fn delete(&mut self, idx: u32) {
        self.o.deleted.insert(idx);
        let uid = self.uid(idx);
        let rec = records::sapi(
            "Delete a user",
            "delete",
            &format!("/api/v2/users/{}", enc(&uid)),
            json!({}),
            204,
            json!({}),
        );
        self.log(rec);
        let mut rng = self.rng();
        self.maybe_noise(&mut rng);
    }

    /// A new database user as Auth0 creates it: no logins, roles or MFA yet, a password.
    fn new_user(&mut self, rng: &mut Rng) -> u32 {
        let idx = self.o.add_user(&self.st.tenant, 0);
        let now = json!(iso_ms(self.now)).to_string();
        self.o.set_field(idx, "created_at", Some(now.clone()));
        self.o.set_field(idx, "updated_at", Some(now));
        self.o.set_field(idx, "logins_count", Some("0".into()));
        for k in ["last_login", "last_ip", "last_password_reset", "multifactor", "multifactor_last_modified"] {
            self.o.set_field(idx, k, None);
        }
        let password = json!({
            "id": format!("password|dev_{}", rng.alnum(16)),
            "type": "password",
            "created_at": iso_ms(self.now),
        });
        self.o.set_methods(idx, vec![password]);
        idx
    }

    fn add(&mut self, via: Via) -> Result<u32> {
        if !matches!(via, Via::User | Via::ManagementApi) {
            return invalid("a user is added via user (signup) or management_api");
        }
        let mut rng = self.rng();
        let idx = self.new_user(&mut rng);
        let mut rec = self.user_record(idx, "ss", "Successful signup", &mut rng);
        let conn = rec["connection"].clone();
        let email = rec["user_name"].clone();
        let uid = self.uid(idx);
        if via == Via::User {
            rec.insert(
                "details".into(),
                json!({"body": {"email": email, "tenant": self.st.tenant.tenant, "connection": conn, "client_id": rec["client_id"]}}),
            );
        } else {
            // The new id is only in the response: the request path names no user.
            rec = records::sapi(
                "Create a user",
                "post",
                "/api/v2/users",
                json!({"email": email, "connection": conn}),
                201,
                json!({"user_id": uid, "email": email}),
            );
        }
        self.log(rec);
        self.maybe_noise(&mut rng);
        Ok(idx)
    }

    /// PATCH /api/v2/users/{id}: top-level fields replaced (`null` removes), metadata merged one
    /// level deep (`null` removes a key), `updated_at` now.
    fn patch(&mut self, idx: u32, patch: &Map<String, Value>) -> Result<()> {
        const EDITABLE: [&str; 13] = [
            "blocked",
            "email",
            "email_verified",
            "phone_number",
            "phone_verified",
            "username",
            "name",
            "nickname",
            "given_name",
            "family_name",
            "picture",
            "user_metadata",
            "app_metadata",
        ];
        if patch.is_empty() {
            return invalid("empty patch");
        }
        if let Some(k) = patch.keys().find(|k| !EDITABLE.contains(&k.as_str())) {
            return invalid(format!("{k} is not an editable profile field; one of {EDITABLE:?}"));
        }
        let raw = self.o.user_raw(&self.st.tenant, idx);
        for (k, v) in patch {
            let text = match (k.as_str(), v) {
                (_, Value::Null) => None,
                ("user_metadata" | "app_metadata", Value::Object(changes)) => {
                    let old = raw.iter().find(|(rk, _)| rk == k).map_or("{}", |(_, t)| t.as_str());
                    Some(merge_object(old, changes))
                }
                ("user_metadata" | "app_metadata", _) => return invalid(format!("{k} must be an object")),
                _ => Some(v.to_string()),
            };
            self.o.set_field(idx, k, text);
        }
        self.o.set_field(idx, "updated_at", Some(json!(iso_ms(self.now)).to_string()));
        let uid = self.uid(idx);
        let rec = records::sapi(
            "Update a user",
            "patch",
            &format!("/api/v2/users/{}", enc(&uid)),
            Value::Object(patch.clone()),
            200,
            json!({}),
        );
        self.log(rec);
        let mut rng = self.rng();
        self.maybe_noise(&mut rng);
        Ok(())
    }
}

/// `old` (an object's JSON text, kept verbatim per member) with `changes` applied one level deep.
fn merge_object(old: &str, changes: &Map<String, Value>) -> String {
    let members = crate::nasty::top_level(old).unwrap_or_default();
    let mut out: Vec<(String, String)> = members
        .into_iter()
        .filter(|(k, _)| !changes.contains_key(k))
        .map(|(k, v)| (serde_json::to_string(&k).unwrap_or_default(), v.to_string()))
        .collect();
    for (k, v) in changes.iter().filter(|(_, v)| !v.is_null()) {
        out.push((serde_json::to_string(k).unwrap_or_default(), v.to_string()));
    }
    let body: Vec<String> = out.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn role_index(st: &AppState, role_id: &str) -> Result<u32> {
    st.tenant
        .roles
        .iter()
        .position(|r| r.id == role_id)
        .map(|r| r as u32)
        .ok_or_else(|| MutationError::UnknownRole(role_id.to_string()))
}

pub fn delete_user(st: &AppState, user_id: &str) -> bool {
    with(st, |cx| cx.live(user_id).map(|idx| cx.delete(idx)).is_ok())
}

pub fn enroll_mfa(st: &AppState, user_id: &str, factor: &str, via: Via) -> Result<String> {
    with(st, |cx| {
        let idx = cx.live(user_id)?;
        cx.enroll(idx, factor, via)
    })
}

pub fn remove_mfa(st: &AppState, user_id: &str, method_id: Option<&str>, via: Via) -> Result<String> {
    with(st, |cx| {
        let idx = cx.live(user_id)?;
        cx.remove_factor(idx, method_id, via)
    })
}

pub fn rename_mfa(
    st: &AppState,
    user_id: &str,
    method_id: Option<&str>,
    name: Option<&str>,
    via: Via,
) -> Result<String> {
    with(st, |cx| {
        let idx = cx.live(user_id)?;
        cx.rename_factor(idx, method_id, name, via)
    })
}

pub fn set_role(st: &AppState, user_id: &str, role_id: &str, on: bool, via: Via) -> Result<()> {
    with(st, |cx| {
        let idx = cx.live(user_id)?;
        let role = role_index(cx.st, role_id)?;
        cx.role(idx, role, on, via)
    })
}

pub fn add_user(st: &AppState, via: Via) -> Result<String> {
    with(st, |cx| cx.add(via).map(|idx| cx.uid(idx)))
}

pub fn update_profile(st: &AppState, user_id: &str, patch: &Map<String, Value>) -> Result<()> {
    with(st, |cx| {
        let idx = cx.live(user_id)?;
        cx.patch(idx, patch)
    })
}

/// Guardian factor names of PUT /api/v2/guardian/factors/{name}.
const FACTORS: [&str; 8] =
    ["sms", "push-notification", "otp", "email", "duo", "webauthn-roaming", "webauthn-platform", "recovery-code"];

/// A tenant-wide MFA policy change: `sapi PUT /api/v2/guardian/factors/{factor}`; no user changes.
pub fn set_mfa_factor(st: &AppState, factor: &str, enabled: bool) -> Result<()> {
    if !FACTORS.contains(&factor) {
        return invalid(format!("unknown Guardian factor {factor:?}; one of {FACTORS:?}"));
    }
    with(st, |cx| {
        let rec = records::sapi(
            "Update a multi-factor authentication factor",
            "put",
            &format!("/api/v2/guardian/factors/{factor}"),
            json!({"enabled": enabled}),
            200,
            json!({"enabled": enabled}),
        );
        cx.log(rec);
        Ok(())
    })
}

/// A bulk import of `n` new database users: `sapi POST /api/v2/jobs/users-imports`, then `sui`, which
/// names no user (clients must fall back to a full export).
pub fn import_users(st: &AppState, n: usize) -> Result<Vec<String>> {
    if !(1..=100_000).contains(&n) {
        return invalid("an import adds 1 to 100000 users");
    }
    with(st, |cx| {
        let mut rng = cx.rng();
        let ids: Vec<u32> = (0..n).map(|_| cx.new_user(&mut rng)).collect();
        let conn = &cx.st.tenant.connections[0];
        let job = format!("job_{}", rng.alnum(16));
        let rec = records::sapi(
            "Create import users job",
            "post",
            "/api/v2/jobs/users-imports",
            json!({"connection_id": conn.id, "upsert": false, "send_completion_email": false}),
            201,
            json!({"type": "users_import", "status": "pending", "id": job, "connection_id": conn.id}),
        );
        cx.log(rec);
        let mut sui = Map::new();
        sui.insert("type".into(), json!("sui"));
        // [UNVERIFIED] description text.
        sui.insert("description".into(), json!(format!("Successful users import: {n} users inserted")));
        sui.insert("connection".into(), json!(conn.name));
        sui.insert("connection_id".into(), json!(conn.id));
        sui.insert("details".into(), json!({"connection": conn.name, "tenant": cx.st.tenant.tenant}));
        cx.log(sui);
        Ok(ids.into_iter().map(|i| cx.uid(i)).collect())
    })
}

/// `n` unrelated records (logins, token exchanges, ...) now.
pub fn log_noise(st: &AppState, n: usize) {
    with(st, |cx| {
        let mut rng = cx.rng();
        for _ in 0..n {
            let rec = records::noise(cx.st, cx.o, &mut rng);
            cx.log(rec);
        }
    })
}

/// A deterministic mix of every per-user change on about `share` of the live users (each changed
/// once); see [`Mutations`].
pub fn mutate_random(st: &AppState, share: f64, seed: u64) -> Mutations {
    with(st, |cx| {
        let mut rng = Rng::stream(seed, 0x6d75, SALT_MUTATION);
        let mut out = Mutations::default();
        let roles = cx.st.tenant.roles.len() as u32;
        for idx in 0..cx.o.total() {
            if cx.o.deleted.contains(&idx) || !rng.chance(share) {
                continue;
            }
            let uid = cx.uid(idx);
            let roll = rng.below(100);
            let via = |rng: &mut Rng, options: &[Via]| *rng.pick(options);
            match roll {
                0..=7 => {
                    cx.delete(idx);
                    out.deleted.push(uid);
                }
                8..=15 => {
                    let v = via(&mut rng, &[Via::User, Via::ManagementApi]);
                    if let Ok(new) = cx.add(v) {
                        out.added.push(cx.uid(new));
                    }
                }
                16..=39 => {
                    let mut patch = Map::new();
                    match rng.below(3) {
                        0 => patch.insert("name".into(), json!(format!("Renamed \"{}\" 🎉", rng.alnum(6)))),
                        1 => patch.insert("user_metadata".into(), json!({"sim_edit": rng.below(1000), "theme": null})),
                        _ => patch.insert(
                            "app_metadata".into(),
                            json!({"plan": *rng.pick(&["free", "pro", "team, annual"])}),
                        ),
                    };
                    if cx.patch(idx, &patch).is_ok() {
                        out.fields_changed.push(uid);
                    }
                }
                40..=74 => {
                    let has = cx.methods(idx).iter().any(|m| m["type"] != "password");
                    let done = match rng.below(3) {
                        1 if has => {
                            // The enrollment route only for users who have a Guardian enrollment.
                            let options: &[Via] = if data::enrollments(&cx.methods(idx)).is_empty() {
                                &[Via::User, Via::ManagementApi, Via::MyAccount]
                            } else {
                                &[
                                    Via::User,
                                    Via::ManagementApi,
                                    Via::GuardianEnrollment,
                                    Via::GuardianEnrollment,
                                    Via::MyAccount,
                                ]
                            };
                            let v = via(&mut rng, options);
                            cx.remove_factor(idx, None, v)
                        }
                        2 if has => {
                            let v = via(&mut rng, &[Via::User, Via::MyAccount, Via::ManagementApi]);
                            cx.rename_factor(idx, None, None, v)
                        }
                        _ => {
                            let ty = *rng.pick(&["totp", "phone", "push", "email", "webauthn-roaming", "passkey"]);
                            let v = via(&mut rng, &[Via::User, Via::User, Via::ManagementApi, Via::MyAccount]);
                            cx.enroll(idx, ty, v)
                        }
                    };
                    if done.is_ok() {
                        out.mfa_changed.push(uid);
                    }
                }
                _ if roles > 0 => {
                    let held = cx.o.role_indexes(&cx.st.tenant, idx);
                    let remove = !held.is_empty() && (held.len() as u32 == roles || rng.chance(0.5));
                    let done = if remove {
                        let r = held[rng.below(held.len() as u64) as usize];
                        cx.role(idx, r, false, Via::ManagementApi)
                    } else {
                        let free: Vec<u32> = (0..roles).filter(|r| !held.contains(r)).collect();
                        let r = free[rng.below(free.len() as u64) as usize];
                        cx.role(idx, r, true, via(&mut rng, &[Via::ManagementApi, Via::ManagementApi, Via::Role]))
                    };
                    if done.is_ok() {
                        out.roles_changed.push(uid);
                    }
                }
                _ => {}
            }
        }
        for list in
            [&mut out.added, &mut out.deleted, &mut out.fields_changed, &mut out.mfa_changed, &mut out.roles_changed]
        {
            list.sort();
        }
        out
    })
}
