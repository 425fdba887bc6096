//! Operating the server: the admin listener ([`admin`]: metrics, health, readiness), the
//! Prometheus registry ([`metrics`]) and the abuse limits ([`limits`]).

pub mod admin;
pub mod limits;
pub mod metrics;
