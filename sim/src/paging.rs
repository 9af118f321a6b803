//! Query-string parsing for offset paging, with Auth0's "Query validation error" messages.

use std::collections::HashMap;

use axum::response::Response;

use crate::errors;

pub type Query = HashMap<String, String>;

const PER_PAGE_DESC: &str = "Number of results per page. Defaults to 50";
const PAGE_DESC: &str = "Page index of the results to return. First page is 0";
const TOTALS_DESC: &str = "Return results inside an object that contains the total result count (true) or as a direct array of results (false, default)";

#[derive(Clone, Copy, Debug)]
pub struct Paging {
    pub page: u64,
    pub per_page: u64,
    pub include_totals: bool,
}

impl Paging {
    /// Offset paging with `per_page` in `min_per_page..=100`, default 50.
    pub fn parse(q: &Query, min_per_page: i64) -> Result<Paging, Response> {
        let per_page = int_param(q, "per_page", min_per_page, 100, PER_PAGE_DESC)?.unwrap_or(50);
        let page = int_param(q, "page", 0, i64::MAX, PAGE_DESC)?.unwrap_or(0);
        let include_totals = bool_param(q, "include_totals", TOTALS_DESC)?.unwrap_or(false);
        Ok(Paging { page, per_page, include_totals })
    }

    pub fn start(&self) -> u64 {
        self.page.saturating_mul(self.per_page)
    }

    /// The slice of `items` this page covers.
    pub fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = (self.start() as usize).min(items.len());
        let end = start.saturating_add(self.per_page as usize).min(items.len());
        &items[start..end]
    }
}

pub fn int_param(q: &Query, name: &str, min: i64, max: i64, desc: &str) -> Result<Option<u64>, Response> {
    let Some(raw) = q.get(name) else {
        return Ok(None);
    };
    let fail = |what: String| errors::invalid_query(&format!("'{what}' on property {name} ({desc})."));
    let v: i64 = raw.trim().parse().map_err(|_| fail("Expected type integer but found type string".into()))?;
    if v < min {
        return Err(fail(format!("Value {v} is less than minimum {min}")));
    }
    if v > max {
        return Err(fail(format!("Value {v} is greater than maximum {max}")));
    }
    Ok(Some(v as u64))
}

pub fn bool_param(q: &Query, name: &str, desc: &str) -> Result<Option<bool>, Response> {
    match q.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(errors::invalid_query(&format!(
            "'Expected type boolean but found type string' on property {name} ({desc})."
        ))),
    }
}
