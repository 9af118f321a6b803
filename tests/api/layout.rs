//! The storage layout: one partition per export, each filter shape served by an index of that
//! partition (checked with EXPLAIN on the very SQL the service runs, as a generic cached plan),
//! and deleting an export in one step.

use std::time::{Duration, Instant};

use auth0_exporter::db::profiles::ProfileFilter;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::*;

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Every node of a JSON plan.
fn nodes(plan: &Value, out: &mut Vec<Value>) {
    out.push(plan.clone());
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

#[tokio::test]
async fn every_filter_shape_reads_an_index_of_the_exports_own_partition() {
    let app = spawn_app_with(sim_config(120), 500.0).await;
    // Two exports: the plans must touch only the asked one's partition.
    let other = app.create_export(json!({"enrich": all_enrichments()})).await;
    let id = app.create_export(json!({"enrich": all_enrichments()})).await;
    app.wait_for(&other, "completed").await;
    app.wait_for(&id, "completed").await;
    let part = format!("profiles_{}", id.replace('-', ""));
    let (role, connection, email) = {
        let t = &app.sim.truth()[7];
        (
            t["roles"][0]["name"].as_str().map(str::to_owned).unwrap_or_else(|| "Guest".into()),
            t["identities"][0]["connection"].as_str().unwrap().to_owned(),
            t["email"].as_str().map(str::to_owned).unwrap_or_else(|| "x@example.com".into()),
        )
    };

    let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
    // As a cached statement runs after a few executions; any seq scan left means no index fits.
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut shapes = 0;
    for bits in 0u8..16 {
        for after in [false, true] {
            let filter = ProfileFilter {
                role: (bits & 1 != 0).then(|| role.clone()),
                has_mfa: (bits & 2 != 0).then_some(true),
                connection: (bits & 4 != 0).then(|| connection.clone()),
                email: (bits & 8 != 0).then(|| email.clone()),
            };
            let mut types = vec!["uuid", "int8"];
            let mut values = vec![literal(&id), "101".to_owned()];
            if after {
                types.push("text");
                values.push(literal("auth0|5"));
            }
            for (set, ty, value) in [
                (filter.role.is_some(), "text", literal(&role)),
                (filter.has_mfa.is_some(), "bool", "true".into()),
                (filter.connection.is_some(), "text", literal(&connection)),
                (filter.email.is_some(), "text", literal(&email)),
            ] {
                if set {
                    types.push(ty);
                    values.push(value);
                }
            }
            let sql = filter.page_sql(after);
            sqlx::raw_sql(&format!("PREPARE shape({}) AS {sql}", types.join(", "))).execute(&mut conn).await.unwrap();
            let plan: Value =
                sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE shape({})", values.join(", ")))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            sqlx::raw_sql("DEALLOCATE shape").execute(&mut conn).await.unwrap();
            let mut all = Vec::new();
            nodes(&plan[0]["Plan"], &mut all);
            let scans: Vec<&Value> = all.iter().filter(|n| n["Relation Name"].is_string()).collect();
            assert!(!scans.is_empty(), "{sql}: {plan}");
            for scan in scans {
                if scan["Relation Name"] == "exports" {
                    // The check that the export still exists: one key lookup.
                    assert_eq!(scan["Index Name"], "exports_pkey", "{sql}: {plan}");
                    continue;
                }
                assert_eq!(scan["Relation Name"], part.as_str(), "{sql} reads another export's rows: {plan}");
                let kind = scan["Node Type"].as_str().unwrap();
                assert_ne!(kind, "Seq Scan", "{sql} has no index to use: {plan}");
            }
            assert!(
                all.iter().any(|n| n["Index Name"].as_str().is_some_and(|i| i.starts_with(&part))),
                "{sql} uses no index of the partition: {plan}"
            );
            shapes += 1;
        }
    }
    assert_eq!(shapes, 32);
}

#[tokio::test]
async fn deleting_an_export_removes_it_and_its_partition_at_once() {
    let app = spawn_app_with(sim_config(60), 500.0).await;
    let id = app.create_export(json!({})).await;
    app.wait_for(&id, "completed").await;
    let part = format!("profiles_{}", id.replace('-', ""));

    let resp = app.http.delete(app.url(&format!("/v1/exports/{id}"))).bearer_auth(READ_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 403, "deleting needs the write scope");

    // A page read first: the replica now knows the export's request, as every replica serving
    // it would, and must still see that it was deleted.
    assert_eq!(app.get(&format!("/v1/exports/{id}/profiles"), READ_TOKEN).await.status(), 200);
    let started = Instant::now();
    let resp = app.http.delete(app.url(&format!("/v1/exports/{id}"))).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(app.get(&format!("/v1/exports/{id}"), READ_TOKEN).await.status(), 404);
    assert_eq!(app.get(&format!("/v1/exports/{id}/profiles"), READ_TOKEN).await.status(), 404);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Option<String> =
            sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&part).fetch_one(&app.pool).await.unwrap();
        if left.is_none() {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE export_id = $1::uuid")
                .bind(&id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
            assert_eq!(rows, 0);
            break;
        }
        assert!(Instant::now() < deadline, "the partition was never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = app.http.delete(app.url(&format!("/v1/exports/{id}"))).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // A running export is refused until cancelled.
    app.sim.set_faults(auth0_sim::Faults { latency_min_ms: 2000, latency_max_ms: 2000, ..Default::default() });
    let running = app.create_export(json!({})).await;
    let resp =
        app.http.delete(app.url(&format!("/v1/exports/{running}"))).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    app.post(&format!("/v1/exports/{running}/cancel"), WRITE_TOKEN, &json!({})).await;
    app.wait_for(&running, "cancelled").await;
    let resp =
        app.http.delete(app.url(&format!("/v1/exports/{running}"))).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 204);
}
