//! auth0-exporter: complete Auth0 user profiles (export fields, roles, MFA factors) over REST.

pub mod app;
pub mod auth0;
pub mod config;
pub mod crash_point;
pub mod cron;
pub mod db;
pub mod demo;
pub mod document;
pub mod http;
pub mod model;
pub mod pipeline;
pub mod queue;
pub mod scheduler;
pub mod telemetry;
pub mod webhooks;
