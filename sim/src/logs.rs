//! Tenant logs: an append-only store purged by retention, GET /api/v2/logs (checkpoint and offset
//! paging) and GET /api/v2/logs/{id}.
//!
//! Auth0 (docs "Retrieve Log Events Using the Management API"): with `from`/`take` every other
//! parameter is ignored, records come in log_id order, at most 100 per page, and each answer carries a
//! `Link` header whose `next` URL continues after the last record (the same URL when nothing is new).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::config::unix_ms;
use crate::paging::{self, Paging};
use crate::{errors, lock, AppState};

/// Digits of the sequence part of a log_id; the whole id is `900` + 14 date digits + these.
const SEQ_DIGITS: usize = 39;
const ID_LEN: usize = 3 + 14 + SEQ_DIGITS;
/// Offset paging stops at this many records, as role members do.
const OFFSET_CAP: u64 = 1000;

struct Record {
    seq: u64,
    id: String,
    /// UNIX ms; moved back by `age`.
    date: i64,
    body: Map<String, Value>,
}

pub struct Store {
    records: VecDeque<Record>,
    next_seq: u64,
    /// Highest sequence number purged by retention (0: none).
    purged: u64,
    /// Date of the newest record: dates never go backwards, so date order is log_id order.
    last_date: i64,
    /// Time in the newest log_id; unlike dates it is never aged, so ids keep increasing.
    last_id_ms: i64,
    retention_ms: i64,
}

/// Why a `from` log_id matches no retained record.
#[derive(Debug, PartialEq)]
enum Miss {
    Purged,
    Unknown,
}

impl Store {
    pub fn new(retention: Duration) -> Store {
        Store {
            records: VecDeque::new(),
            next_seq: 1,
            purged: 0,
            last_date: 0,
            last_id_ms: 0,
            retention_ms: retention.as_millis().min(i64::MAX as u128) as i64,
        }
    }

    /// Appends a record dated `now_ms` (or the newest date, if later); returns its log_id.
    pub fn push(&mut self, now_ms: i64, mut body: Map<String, Value>) -> String {
        self.purge(now_ms);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.last_date = self.last_date.max(now_ms);
        self.last_id_ms = self.last_id_ms.max(now_ms);
        let stamp = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(self.last_id_ms).unwrap_or_default();
        let id = format!("900{}{seq:0width$}", stamp.format("%Y%m%d%H%M%S"), width = SEQ_DIGITS);
        body.remove("log_id");
        body.remove("date");
        self.records.push_back(Record { seq, id: id.clone(), date: self.last_date, body });
        id
    }

    /// Drops what is older than the retention.
    fn purge(&mut self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        while self.records.front().is_some_and(|r| r.date < cutoff) {
            if let Some(r) = self.records.pop_front() {
                self.purged = r.seq;
            }
        }
    }

    /// Moves every record `ms` into the past (tests make checkpoints fall out of retention this way).
    pub fn age(&mut self, ms: i64) {
        for r in &mut self.records {
            r.date -= ms;
        }
        self.last_date -= ms;
    }

    /// Position of the retained record with this log_id.
    fn find(&self, id: &str) -> Result<usize, Miss> {
        // log_ids are fixed-width digits, so their string order is their order.
        match self.records.binary_search_by(|r| r.id.as_str().cmp(id)) {
            Ok(pos) => Ok(pos),
            Err(_) => {
                let seq = (id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| id[ID_LEN - SEQ_DIGITS..].parse::<u64>().ok())
                    .flatten();
                match seq {
                    Some(s) if s >= 1 && s <= self.purged => Err(Miss::Purged),
                    _ => Err(Miss::Unknown),
                }
            }
        }
    }

    fn render(r: &Record) -> Value {
        let mut out = r.body.clone();
        out.insert("date".into(), json!(crate::data::iso_ms(r.date)));
        out.insert("log_id".into(), json!(r.id));
        Value::Object(out)
    }

    /// Every retained record, oldest first.
    pub fn all(&mut self, now_ms: i64) -> Vec<Value> {
        self.purge(now_ms);
        self.records.iter().map(Store::render).collect()
    }
}

fn now() -> i64 {
    unix_ms() as i64
}

pub async fn list(State(st): State<Arc<AppState>>, Query(q): Query<paging::Query>, headers: HeaderMap) -> Response {
    // `take` (or `from`) selects checkpoint paging, whatever else is sent.
    if q.contains_key("take") || q.contains_key("from") {
        return checkpoint(&st, &q, &headers);
    }
    let p = match Paging::parse(&q, 0) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let newest_first = match q.get("sort").map(String::as_str) {
        None | Some("date:-1") => true,
        Some("date:1") => false,
        Some(other) => {
            return errors::invalid_query(&format!(
                "'String does not match pattern ^date:(1|-1)$: {other}' on property sort (The field to use for sorting. Use field:order where order is 1 for ascending and -1 for descending. For example date:-1)."
            ))
        }
    };
    if (p.page + 1).saturating_mul(p.per_page) > OFFSET_CAP {
        return errors::mgmt(
            StatusCode::BAD_REQUEST,
            &format!(
                "Requesting page {} exceeds the allowed maximum of 1000 records. To fetch results beyond 1000, use the checkpoint pagination method.",
                p.page
            ),
            None,
        );
    }
    let mut store = lock(&st.logs);
    store.purge(now());
    let total = store.records.len();
    let start = p.start() as usize;
    let take = p.per_page as usize;
    let page: Vec<Value> = if newest_first {
        store.records.iter().rev().skip(start).take(take).map(Store::render).collect()
    } else {
        store.records.iter().skip(start).take(take).map(Store::render).collect()
    };
    drop(store);
    if p.include_totals {
        let length = page.len();
        Json(json!({"start": p.start(), "limit": p.per_page, "length": length, "total": total, "logs": page}))
            .into_response()
    } else {
        Json(page).into_response()
    }
}

fn checkpoint(st: &AppState, q: &paging::Query, headers: &HeaderMap) -> Response {
    let take =
        match paging::int_param(q, "take", 1, 100, "Number of entries to retrieve when using the from parameter.") {
            Ok(t) => t.unwrap_or(50) as usize,
            Err(r) => return r,
        };
    let from = q.get("from").filter(|f| !f.is_empty());
    let mut store = lock(&st.logs);
    store.purge(now());
    let start = match from {
        None => 0,
        Some(f) => match store.find(f) {
            Ok(pos) => pos + 1,
            // [UNVERIFIED] Auth0's exact text for a purged or unknown checkpoint is not documented.
            Err(miss) => {
                let why = if miss == Miss::Purged { "too old (past the log retention period)" } else { "invalid" };
                return errors::invalid_query(&format!(
                    "'The log_id {f} is {why}' on property from (Log Event Id from which to start selection from.)."
                ));
            }
        },
    };
    let page: Vec<Value> = store.records.iter().skip(start).take(take).map(Store::render).collect();
    drop(store);
    // The next page starts after the last record; with nothing new it is this very request again.
    let next_from = page.last().and_then(|r| r["log_id"].as_str()).map(str::to_string).or(from.cloned());
    let base = crate::api::request_base(st, headers);
    let url = match next_from {
        Some(f) => format!("{base}/api/v2/logs?from={f}&take={take}"),
        None => format!("{base}/api/v2/logs?take={take}"),
    };
    let mut resp = Json(page).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
        resp.headers_mut().insert(header::LINK, v);
    }
    resp
}

pub async fn get_one(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let mut store = lock(&st.logs);
    store.purge(now());
    match store.find(&id) {
        Ok(pos) => Json(Store::render(&store.records[pos])).into_response(),
        // [UNVERIFIED] message and errorCode.
        Err(_) => errors::mgmt(StatusCode::NOT_FOUND, "The log does not exist.", Some("inexistent_log")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_retention_purges() {
        let mut s = Store::new(Duration::from_secs(60));
        let t = 1_700_000_000_000;
        let a = s.push(t, Map::new());
        let b = s.push(t - 5, Map::new());
        assert_eq!(a.len(), ID_LEN);
        assert!(a < b);
        assert_eq!(s.find(&b), Ok(1));
        s.age(61_000);
        let c = s.push(t, Map::new());
        assert_eq!(s.find(&a), Err(Miss::Purged));
        assert_eq!(s.find(&c), Ok(0));
        assert_eq!(s.find("900"), Err(Miss::Unknown));
        assert_eq!(s.find(&format!("{}9", &c[..ID_LEN - 1])), Err(Miss::Unknown));
        assert_eq!(s.all(t)[0]["log_id"], c);
    }
}
