//! Export jobs: POST /jobs/users-exports validation, GET /jobs/{id} lifecycle, signed links and the streamed gzip download.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Map, Value};

use crate::data::{self, mix};
use crate::nasty::{self, RawUser};
use crate::overlay::Overlay;
use crate::{errors, lock, AppState};

/// Fields exported when the job names none (the "complete profile" set of AUTH0.md §8).
pub const DEFAULT_FIELDS: [&str; 23] = [
    "user_id",
    "email",
    "email_verified",
    "username",
    "phone_number",
    "phone_verified",
    "name",
    "nickname",
    "given_name",
    "family_name",
    "picture",
    "created_at",
    "updated_at",
    "identities",
    "app_metadata",
    "user_metadata",
    "multifactor",
    "multifactor_last_modified",
    "last_ip",
    "last_login",
    "last_password_reset",
    "logins_count",
    "blocked",
];

/// Jobs (and their files) disappear from the status view after this.
const JOB_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// CSV exports are limited to this many fields.
const CSV_MAX_FIELDS: usize = 30;

#[derive(Clone, Debug)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// One exported column: its output key and the path read from the user object.
#[derive(Clone, Debug)]
pub struct FieldSpec {
    pub title: String,
    pub path: Vec<Seg>,
}

/// `identities[0].connection` -> Key(identities), Index(0), Key(connection).
pub fn parse_path(name: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in name.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            match inner.split_once(']') {
                Some((n, tail)) => {
                    match n.parse() {
                        Ok(i) => out.push(Seg::Index(i)),
                        Err(_) => out.push(Seg::Key(n.to_string())),
                    }
                    rest = tail;
                }
                None => {
                    out.push(Seg::Key(rest.to_string()));
                    rest = "";
                }
            }
        }
    }
    out
}

/// The exact JSON text at `path` in a raw user.
pub fn lookup<'a>(user: &'a RawUser, path: &[Seg]) -> Option<&'a str> {
    let (Seg::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let top = user.iter().find(|(k, _)| k == first).map(|(_, v)| v.as_str())?;
    rest.iter().try_fold(top, |cur, seg| match seg {
        Seg::Key(k) => nasty::member(cur, k),
        Seg::Index(i) => nasty::element(cur, *i),
    })
}

/// `(title, JSON text)` of every requested field the user has, in request order.
pub fn export_pairs<'a>(user: &'a RawUser, fields: &'a [FieldSpec]) -> Vec<(&'a str, &'a str)> {
    fields.iter().filter_map(|f| Some((f.title.as_str(), lookup(user, &f.path)?))).collect()
}

pub fn default_fields() -> Vec<FieldSpec> {
    DEFAULT_FIELDS.iter().map(|n| FieldSpec { title: n.to_string(), path: parse_path(n) }).collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// How a job ends once its processing time is over.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Complete,
    Fail,
    Expire,
}

#[derive(Clone, Debug)]
pub struct Job {
    fate: Fate,
    id: String,
    created: Instant,
    created_at: String,
    format: Format,
    conn: Option<usize>,
    limit: Option<u64>,
    fields_echo: Value,
    fields: Vec<FieldSpec>,
    duration: Duration,
    /// The export file, written to disk while the job processes (Auth0 writes it to S3 before the job
    /// completes); a download then only streams bytes. Set once: the path, or why it could not be written.
    file: Arc<OnceLock<Result<PathBuf, String>>>,
}

impl Job {
    fn describe(&self, st: &AppState) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), json!("users_export"));
        m.insert("status".into(), json!("pending"));
        if let Some(c) = self.conn {
            let c = &st.tenant.connections[c];
            m.insert("connection_id".into(), json!(c.id));
            m.insert("connection".into(), json!(c.name));
        }
        m.insert("format".into(), json!(self.format.as_str()));
        if let Some(l) = self.limit {
            m.insert("limit".into(), json!(l));
        }
        m.insert("fields".into(), self.fields_echo.clone());
        m.insert("created_at".into(), json!(self.created_at));
        m.insert("id".into(), json!(self.id));
        m
    }

    fn file_name(&self, tenant: &str) -> String {
        format!("{tenant}.{}.gz", self.format.as_str())
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn wrong_type(expected: &str, v: &Value, prop: &str) -> String {
    format!("'Expected type {expected} but found type {}' on property {prop}.", type_name(v))
}

fn valid_con_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("con_") && s[4..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn valid_job_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("job_") && s[4..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Schema checks of CreateExportUsersRequestContent (additionalProperties: false).
fn validate(st: &AppState, body: &Value) -> Result<Job, String> {
    let Some(obj) = body.as_object() else {
        return Err(format!("'Expected type object but found type {}'.", type_name(body)));
    };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "connection_id" | "format" | "limit" | "fields")) {
        return Err(format!("'Additional properties not allowed: {k}'."));
    }
    let conn = match obj.get("connection_id") {
        None => None,
        Some(Value::String(s)) if !valid_con_id(s) => {
            return Err(format!(
                "'String does not match pattern ^con_[A-Za-z0-9]{{16}}$: {s}' on property connection_id."
            ))
        }
        Some(Value::String(s)) => match st.tenant.connections.iter().position(|c| c.id == *s) {
            Some(i) => Some(i),
            None => return Err(format!("'Connection does not exist: {s}' on property connection_id.")),
        },
        Some(v) => return Err(wrong_type("string", v, "connection_id")),
    };
    let format = match obj.get("format") {
        // Auth0's dashboard default.
        None => Format::Csv,
        Some(Value::String(s)) if s == "json" => Format::Json,
        Some(Value::String(s)) if s == "csv" => Format::Csv,
        Some(Value::String(s)) => return Err(format!("'No enum match for: \"{s}\"' on property format.")),
        Some(v) => return Err(wrong_type("string", v, "format")),
    };
    let limit = match obj.get("limit") {
        None => None,
        Some(Value::Number(n)) if n.as_i64().is_some() || n.as_u64().is_some() => match n.as_u64() {
            Some(l) if l >= 1 => Some(l),
            _ => return Err(format!("'Value {n} is less than minimum 1' on property limit.")),
        },
        Some(v) => return Err(wrong_type("integer", v, "limit")),
    };
    let (fields, fields_echo) = match obj.get("fields") {
        None => (None, None),
        Some(Value::Array(items)) => {
            let mut specs = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let prop = format!("fields[{i}]");
                let Some(f) = item.as_object() else {
                    return Err(wrong_type("object", item, &prop));
                };
                if let Some(k) = f.keys().find(|k| !matches!(k.as_str(), "name" | "export_as")) {
                    return Err(format!("'Additional properties not allowed: {k}' on property {prop}."));
                }
                let name = match f.get("name") {
                    None => return Err(format!("'Missing required property: name' on property {prop}.")),
                    Some(Value::String(s)) => s,
                    Some(v) => return Err(wrong_type("string", v, &format!("{prop}.name"))),
                };
                let export_as = match f.get("export_as") {
                    None => None,
                    Some(Value::String(s)) => Some(s),
                    Some(v) => return Err(wrong_type("string", v, &format!("{prop}.export_as"))),
                };
                for (what, s) in [("name", Some(name)), ("export_as", export_as)] {
                    if let Some(s) = s {
                        let n = s.chars().count();
                        if n > 100 {
                            return Err(format!(
                                "'String is too long ({n} chars), maximum 100' on property {prop}.{what}."
                            ));
                        }
                    }
                }
                specs.push(FieldSpec { title: export_as.unwrap_or(name).clone(), path: parse_path(name) });
            }
            if format == Format::Csv && specs.len() > CSV_MAX_FIELDS {
                return Err(format!(
                    "'Array is too long ({}), maximum {CSV_MAX_FIELDS}' on property fields.",
                    specs.len()
                ));
            }
            // An empty list behaves like no list.
            if specs.is_empty() {
                (None, None)
            } else {
                (Some(specs), Some(Value::Array(items.clone())))
            }
        }
        Some(v) => return Err(wrong_type("array", v, "fields")),
    };
    let fields_echo = fields_echo.unwrap_or_else(|| json!(DEFAULT_FIELDS.map(|n| json!({ "name": n })).to_vec()));
    let cfg = &st.cfg;
    Ok(Job {
        fate: Fate::Complete,
        id: format!("job_{}", st.random_alnum(16)),
        created: Instant::now(),
        created_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        format,
        conn,
        limit,
        fields_echo,
        fields: fields.unwrap_or_else(default_fields),
        duration: cfg.job_base + cfg.job_per_user.saturating_mul(cfg.users.min(u32::MAX as u64) as u32),
        file: Arc::new(OnceLock::new()),
    })
}

pub async fn create(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return errors::invalid_body(&format!("'Invalid JSON: {e}'.")),
    };
    let mut job = match validate(&st, &body) {
        Ok(j) => j,
        Err(msg) => return errors::invalid_body(&msg),
    };
    {
        let mut f = lock(&st.faults);
        if f.fail_jobs > 0 {
            f.fail_jobs -= 1;
            job.fate = Fate::Fail;
        } else if f.expire_jobs > 0 {
            f.expire_jobs -= 1;
            job.fate = Fate::Expire;
        }
    }
    let out = job.describe(&st);
    if job.fate == Fate::Complete {
        write_file(st.clone(), job.clone());
    }
    crate::records::export_created(&st, &job.id, &body);
    lock(&st.jobs).insert(job.id.clone(), job);
    lock(&st.counters).stats.jobs_created += 1;
    (StatusCode::OK, Json(Value::Object(out))).into_response()
}

pub async fn get_job(State(st): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !valid_job_id(&id) {
        return errors::mgmt(StatusCode::BAD_REQUEST, "Invalid request URI", Some("invalid_uri"));
    }
    let Some(job) = lock(&st.jobs).get(&id).cloned() else {
        return errors::mgmt(StatusCode::NOT_FOUND, "The job does not exist.", Some("inexistent_job"));
    };
    let mut out = job.describe(&st);
    let elapsed = job.created.elapsed();
    let total = job.duration.as_secs_f64();
    let left = (total - elapsed.as_secs_f64()).max(0.0).ceil() as u64;
    // A job completes once its time is over and its file is written, whichever is later.
    let ready = job.fate != Fate::Complete || job.file.get().is_some();
    let over = elapsed.as_secs_f64() >= total && ready;
    if elapsed > JOB_EXPIRY || (over && job.fate == Fate::Expire) {
        out.insert("status".into(), json!("expired"));
    } else if over && job.fate == Fate::Fail {
        // [UNVERIFIED] Auth0 documents no detail for failed exports; `status_details` is in GetJobResponseContent.
        out.insert("status".into(), json!("failed"));
        out.insert("status_details".into(), json!("An internal error occurred while exporting users."));
    } else if over {
        out.insert("status".into(), json!("completed"));
        let base = crate::api::request_base(&st, &headers);
        out.insert("location".into(), json!(sign_location(&st, &base, &job)));
    } else if elapsed.as_secs_f64() < total * 0.2 {
        out.insert("location".into(), json!(""));
        out.insert("percentage_done".into(), json!(0));
        out.insert("time_left_seconds".into(), json!(left));
    } else {
        let done = (elapsed.as_secs_f64() - total * 0.2) / (total * 0.8) * 100.0;
        out.insert("status".into(), json!("processing"));
        out.insert("percentage_done".into(), json!((done as u64).min(99)));
        out.insert("time_left_seconds".into(), json!(left));
    }
    Json(Value::Object(out)).into_response()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn key_pair_id(st: &AppState) -> String {
    format!("APKA{}", data::Rng::stream(st.cfg.seed, 0, 5).alnum(16).to_uppercase())
}

/// A keyed hash of path + Expires, CloudFront-flavoured base64 (`+=/` -> `-_~`).
fn signature(key: u64, path: &str, expires: u64) -> String {
    let mut out = Vec::with_capacity(32);
    for round in 0..4u64 {
        let mut h = mix(key ^ round);
        for b in path.bytes().chain(expires.to_string().bytes()) {
            h = mix(h ^ b as u64);
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    STANDARD.encode(out).replace('+', "-").replace('=', "_").replace('/', "~")
}

/// A fresh signed URL valid for `link_ttl`.
fn sign_location(st: &AppState, base: &str, job: &Job) -> String {
    let path = format!("/user-exports/{}/{}", job.id, job.file_name(&st.tenant.tenant));
    let expires = (now_ms() + st.cfg.link_ttl.as_millis() as u64).div_ceil(1000);
    format!(
        "{base}{path}?Expires={expires}&Key-Pair-Id={}&Signature={}",
        key_pair_id(st),
        signature(st.sign_key, &path, expires)
    )
}

pub async fn download(
    State(st): State<Arc<AppState>>,
    Path((job_id, file)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    lock(&st.counters).stats.downloads += 1;
    if headers.contains_key(header::AUTHORIZATION) {
        return errors::xml(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        );
    }
    let cut = {
        let mut f = lock(&st.faults);
        if f.expire_downloads > 0 {
            f.expire_downloads -= 1;
            return errors::xml(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
        }
        let cut = f.cut_downloads > 0;
        if cut {
            f.cut_downloads -= 1;
        }
        cut
    };
    let (Some(expires), Some(_), Some(sig)) = (q.get("Expires"), q.get("Key-Pair-Id"), q.get("Signature")) else {
        return errors::xml(StatusCode::FORBIDDEN, "MissingKey", "Missing Key-Pair-Id query parameter or cookie value");
    };
    let path = format!("/user-exports/{job_id}/{file}");
    let expires_ok = expires.parse::<u64>().ok().filter(|e| *sig == signature(st.sign_key, &path, *e));
    let Some(expires) = expires_ok else {
        return errors::xml(StatusCode::FORBIDDEN, "AccessDenied", "Access denied");
    };
    if now_ms() > expires * 1000 {
        return errors::xml(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let job = lock(&st.jobs).get(&job_id).cloned();
    let Some(job) = job.filter(|j| j.file_name(&st.tenant.tenant) == file && j.fate == Fate::Complete) else {
        return errors::xml(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
    };
    if let Some(Ok(path)) = job.file.get() {
        if let Ok(file) = std::fs::File::open(path) {
            return stream_file(file, cut);
        }
    }
    // The file could not be written: generate the export while streaming it.
    let export = Export::new(st.clone(), &job, cut);
    let stream = futures_util::stream::unfold(export, |mut e| async move {
        if e.fail_next {
            // Let hyper flush the head and the partial body before the abort.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let item = e.step()?;
        Some((item, e))
    });
    ([(header::CONTENT_TYPE, "application/gzip")], Body::from_stream(stream)).into_response()
}

/// Directory of the export files of every Sim in this process (removed when the Sim is dropped).
pub fn files_dir(sign_key: u64) -> PathBuf {
    std::env::temp_dir().join(format!("auth0-sim-{}-{sign_key:016x}", std::process::id()))
}

/// Writes the job's export file on a thread of its own (gzip stream to disk, memory flat), then marks it ready.
fn write_file(st: Arc<AppState>, job: Job) {
    std::thread::spawn(move || {
        let path = st.files.join(format!("{}.gz", job.id));
        let write = || -> std::io::Result<()> {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
            let mut export = Export::new(st.clone(), &job, false);
            while let Some(chunk) = export.step() {
                out.write_all(&chunk?)?;
            }
            out.flush()
        };
        let result = write().map(|()| path.clone()).map_err(|e| {
            tracing::warn!("auth0-sim: export file {} not written: {e}", path.display());
            let _ = std::fs::remove_file(&path);
            e.to_string()
        });
        let _ = job.file.set(result);
    });
}

/// Bytes read from an export file per stream chunk.
const FILE_CHUNK: usize = 256 * 1024;

/// Streams a written export file; `cut` sends the first half, then aborts the stream.
fn stream_file(file: std::fs::File, cut: bool) -> Response {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let limit = if cut { len / 2 } else { len };
    let stream = futures_util::stream::unfold((Some(file), 0u64), move |(file, sent)| async move {
        let file = file?;
        if sent >= limit {
            if !cut {
                return None;
            }
            // Let hyper flush the head and the partial body before the abort.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let e =
                std::io::Error::new(std::io::ErrorKind::ConnectionReset, "auth0-sim: download cut (fault injection)");
            return Some((Err(e), (None, sent)));
        }
        let want = FILE_CHUNK.min((limit - sent) as usize);
        let read = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut buf = vec![0u8; want];
            let n = std::io::Read::read(&mut file, &mut buf);
            n.map(|n| {
                buf.truncate(n);
                (file, buf)
            })
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match read {
            Ok((_, buf)) if buf.is_empty() => None,
            Ok((file, buf)) => {
                let n = buf.len() as u64;
                Some((Ok(Bytes::from(buf)), (Some(file), sent + n)))
            }
            Err(e) => Some((Err(e), (None, sent))),
        }
    });
    ([(header::CONTENT_TYPE, "application/gzip")], Body::from_stream(stream)).into_response()
}

/// Users handed to the encoder per stream chunk; keeps memory flat and chunks small.
const USERS_PER_CHUNK: usize = 200;

/// The export file generated lazily, chunk by chunk.
struct Export {
    st: Arc<AppState>,
    fields: Vec<FieldSpec>,
    format: Format,
    conn: Option<u8>,
    limit: u64,
    /// The tenant as it was when the export started.
    overlay: Arc<Overlay>,
    next: u64,
    emitted: u64,
    /// Cut the stream after this many users (fault injection).
    cut_at: Option<u64>,
    fail_next: bool,
    finished: bool,
    enc: Option<GzEncoder<Vec<u8>>>,
    line: Vec<u8>,
}

impl Export {
    fn new(st: Arc<AppState>, job: &Job, cut: bool) -> Export {
        let overlay = st.overlay();
        let conn = job.conn.map(|c| c as u8);
        let limit = job.limit.unwrap_or(u64::MAX);
        let cut_at = cut.then(|| {
            let matching = (0..overlay.total())
                .filter(|i| conn.is_none_or(|k| overlay.conn(&st.tenant, *i) == k) && !overlay.deleted.contains(i))
                .count() as u64;
            matching.min(limit) / 2
        });
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        if job.format == Format::Csv {
            let mut header = Vec::new();
            for (i, f) in job.fields.iter().enumerate() {
                if i > 0 {
                    header.push(b',');
                }
                header.push(b'"');
                header.extend_from_slice(f.title.replace('"', "\"\"").as_bytes());
                header.push(b'"');
            }
            header.push(b'\n');
            let _ = enc.write_all(&header);
        }
        Export {
            st,
            fields: job.fields.clone(),
            format: job.format,
            conn,
            limit,
            overlay,
            next: 0,
            emitted: 0,
            cut_at,
            fail_next: false,
            finished: false,
            enc: Some(enc),
            line: Vec::new(),
        }
    }

    fn take_output(&mut self) -> Bytes {
        match self.enc.as_mut() {
            Some(enc) => Bytes::from(std::mem::take(enc.get_mut())),
            None => Bytes::new(),
        }
    }

    /// Flushes what was compressed so far and arms the error that aborts the stream.
    fn cut(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if let Some(enc) = self.enc.as_mut() {
            let _ = enc.flush();
        }
        self.fail_next = true;
        Some(Ok(self.take_output()))
    }

    fn step(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.fail_next {
            self.fail_next = false;
            self.finished = true;
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "auth0-sim: download cut (fault injection)",
            )));
        }
        if self.finished {
            return None;
        }
        if self.cut_at == Some(self.emitted) {
            self.cut_at = None;
            return self.cut();
        }
        let (st, overlay) = (self.st.clone(), self.overlay.clone());
        let tenant = &st.tenant;
        let total = overlay.total() as u64;
        let mut n = 0;
        while n < USERS_PER_CHUNK && self.next < total && self.emitted < self.limit {
            let idx = self.next as u32;
            self.next += 1;
            if self.conn.is_some_and(|c| overlay.conn(tenant, idx) != c) || overlay.deleted.contains(&idx) {
                continue;
            }
            let user = overlay.user_raw(tenant, idx);
            self.line.clear();
            match self.format {
                Format::Json => json_line(&mut self.line, &user, &self.fields),
                Format::Csv => csv_line(&mut self.line, &user, &self.fields),
            }
            if let Some(enc) = self.enc.as_mut() {
                if let Err(e) = enc.write_all(&self.line) {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
            self.emitted += 1;
            n += 1;
            if self.cut_at == Some(self.emitted) {
                self.cut_at = None;
                return self.cut();
            }
        }
        if self.next >= total || self.emitted >= self.limit {
            self.finished = true;
            let enc = self.enc.take()?;
            return Some(enc.finish().map(Bytes::from));
        }
        Some(Ok(self.take_output()))
    }
}

/// One NDJSON line with the fields in request order, values as exact JSON text; absent values are omitted.
pub fn json_line(out: &mut Vec<u8>, user: &RawUser, fields: &[FieldSpec]) {
    write_object(out, &export_pairs(user, fields), &[]);
    out.push(b'\n');
}

/// `{"k":v,...}` from raw pairs, then pairs of owned text.
pub fn write_object(out: &mut Vec<u8>, pairs: &[(&str, &str)], more: &[(&str, String)]) {
    out.push(b'{');
    let all = pairs.iter().map(|(k, v)| (*k, *v)).chain(more.iter().map(|(k, v)| (*k, v.as_str())));
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
}

/// Auth0-generated dates (`2023-01-25T17:48:14.784Z`) escape the CSV-injection quoting.
fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22].iter().all(|i| b[*i].is_ascii_digit())
}

/// One CSV row: strings become `"'text"` with `"` doubled (OWASP CSV-injection escaping); numbers are
/// written as in the JSON text, objects and arrays as their JSON text quoted like strings.
pub fn csv_line(out: &mut Vec<u8>, user: &RawUser, fields: &[FieldSpec]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Some(raw) = lookup(user, &f.path) else { continue };
        let text = match raw.as_bytes().first() {
            None | Some(b'n') => continue,
            Some(b't' | b'f' | b'-' | b'0'..=b'9') => {
                out.extend_from_slice(raw.as_bytes());
                continue;
            }
            Some(b'"') => match serde_json::from_str::<String>(raw) {
                Ok(s) if is_iso_date(&s) => {
                    out.extend_from_slice(s.as_bytes());
                    continue;
                }
                Ok(s) => s,
                Err(_) => raw.to_string(),
            },
            Some(_) => raw.to_string(),
        };
        out.extend_from_slice(b"\"'");
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let u: RawUser =
            vec![("a".into(), r#"{"b":1e400}"#.into()), ("identities".into(), r#"[{"connection":"c"}]"#.into())];
        assert_eq!(lookup(&u, &parse_path("identities[0].connection")), Some(r#""c""#));
        assert_eq!(lookup(&u, &parse_path("a.b")), Some("1e400"));
        assert_eq!(lookup(&u, &parse_path("identities[1].connection")), None);
        assert!(is_iso_date("2023-01-25T17:48:14.784Z"));
        assert!(!is_iso_date("2023-01-25 17:48:14.784Z"));
    }

    #[test]
    fn csv_escaping() {
        let u: RawUser = [("s", r#""a \"q\", b""#), ("d", r#""2023-01-25T17:48:14.784Z""#), ("n", "3"), ("t", "true")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let fields: Vec<FieldSpec> = ["s", "d", "n", "t", "missing"]
            .iter()
            .map(|n| FieldSpec { title: n.to_string(), path: parse_path(n) })
            .collect();
        let mut out = Vec::new();
        csv_line(&mut out, &u, &fields);
        assert_eq!(String::from_utf8(out).unwrap(), "\"'a \"\"q\"\", b\",2023-01-25T17:48:14.784Z,3,true,\n");
    }
}
