//! Logging (text or JSON) and the process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

/// Log levels when `RUST_LOG` is unset.
pub const DEFAULT_LOG: &str = "info,sqlx=warn,tower_http=info";

/// Installs the log subscriber; `LOG_FORMAT=json` for log shippers, `RUST_LOG` for levels
/// (`default` when unset).
pub fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// The recorder is global: installed once, shared by every app in the process (tests start many).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets =
                [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("exporter_exports_total", "Exports that reached a final status, by status");
    describe_gauge!("exporter_exports", "Exports currently in each status");
    describe_histogram!("exporter_stage_duration_seconds", Unit::Seconds, "Time an export spent in each stage");
    describe_counter!("exporter_auth0_requests_total", "Auth0 requests by route template and HTTP status");
    describe_counter!("exporter_auth0_rate_limited_total", "429 answers from Auth0");
    describe_counter!(
        "exporter_rate_limiter_wait_seconds_total",
        Unit::Seconds,
        "Time spent waiting for the shared rate limiter"
    );
    describe_gauge!("exporter_queue_depth", "Queue jobs waiting to run");
    describe_histogram!(
        "exporter_http_request_duration_seconds",
        Unit::Seconds,
        "API request latency by route template"
    );
    metrics::counter!("exporter_auth0_rate_limited_total").absolute(0);
    metrics::counter!("exporter_rate_limiter_wait_seconds_total").absolute(0);
}
