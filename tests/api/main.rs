//! Integration tests: the real service on port 0 against a real Postgres (a fresh database per
//! test) and auth0-sim over real HTTP.

mod exact;
mod exports;
mod faults;
mod freshness;
mod helpers;
mod incremental;
mod layout;
mod proxy;
mod reliability;
mod requests;
mod surface;
