//! Authorization by the database (opt-in: `PGWS_AUTHZ_FUNCTION`, `PGWS_AUTHZ_WRITE_FUNCTION`).
//!
//! PostgREST's conventions, so that one set of row-level security policies serves both: every
//! check and every write runs in a transaction of its own on a pool of its own ([`pool`]), as the
//! token's role (`set_config('role', $1, true)`, the bound-parameter form of `SET LOCAL ROLE`),
//! with the claims in `request.jwt.claims` and the channel and mode in `pgws.channel` and
//! `pgws.mode`.
//!
//! - [`check`]: may this token use this channel in this mode? A boolean SQL function, cached per
//!   (claims, channel, mode) until the token's `exp` or a revocation ([`cache`]).
//! - [`revoke`]: control messages on the listen channel / WAL stream that drop cache entries and
//!   re-check open clients (closing those no longer allowed with 4403), the registry of open
//!   clients, and the periodic re-check.
//! - [`write`]: client messages and HTTP publishes handed to a SQL function instead of NOTIFY.
//!
//! The rest of the server sees [`Authorizer`] (on `AppState`, `None` when off): admission calls
//! [`Authorizer::admit`], a client attaches with [`Authorizer::attach`], the sink hands control
//! messages to [`Authorizer::revoked`] (through the control plane). The protocol-v2 run-time subscribe calls
//! [`Authorizer::check`] per channel. See docs/AUTHORIZATION.md.

pub mod cache;
pub mod check;
pub mod pool;
pub mod revoke;
pub mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};

use crate::auth::{ClaimPath, Grant};
use crate::channel::{ChannelName, quote_ident};
use crate::ops::metrics::ReasonLabel;
use crate::stream::Outbox;

pub use check::AuthzRefusal;
pub use revoke::{Attached, Selector};

/// The websocket close code (and SSE `close` event code) of a client whose access was revoked.
pub const CLOSE_REVOKED: u16 = 4403;
/// The close reason that goes with [`CLOSE_REVOKED`].
pub const REVOKED_REASON: &str = "access revoked";

/// PostgreSQL's identifier limit: a longer role name would be truncated to another role's name.
const MAX_ROLE_BYTES: usize = 63;

/// A SQL function named in a setting, as schema-qualified quoted identifiers (never pasted raw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionName {
    /// `"schema"."name"` or `"name"`.
    quoted: String,
    /// As written.
    shown: String,
}

impl FunctionName {
    /// Parses `name` or `schema.name`; each part is quoted as an identifier (so it is taken
    /// exactly as written, case included).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > 2 {
            return Err("expected `function` or `schema.function`".into());
        }
        if parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 63 || p.chars().any(char::is_control))
        {
            return Err("each part is 1 to 63 bytes without control characters".into());
        }
        Ok(Self {
            quoted: parts
                .iter()
                .map(|p| quote_ident(p))
                .collect::<Vec<_>>()
                .join("."),
            shown: text.to_string(),
        })
    }

    /// The quoted form, for SQL text.
    pub fn quoted(&self) -> &str {
        &self.quoted
    }
}

impl std::fmt::Display for FunctionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The settings of authorization by the database (`PGWS_AUTHZ_*`).
#[derive(Debug, Clone)]
pub struct AuthzSettings {
    /// The check function (`PGWS_AUTHZ_FUNCTION`): `() → boolean`; `None`: no subscribe checks.
    pub check_function: Option<FunctionName>,
    /// The write function (`PGWS_AUTHZ_WRITE_FUNCTION`): `(channel text, message text)`;
    /// `None`: client messages are NOTIFYed as before.
    pub write_function: Option<FunctionName>,
    /// Where the role is in the claims (`PGWS_AUTHZ_ROLE_CLAIM`, default `role`).
    pub role_claim: ClaimPath,
    /// The role of tokens without one (`PGWS_AUTHZ_ANON_ROLE`); `None`: such tokens are refused.
    pub anon_role: Option<String>,
    /// Connections of the check pool (`PGWS_AUTHZ_POOL_SIZE`).
    pub pool_size: usize,
    /// Connections of the write pool (`PGWS_AUTHZ_WRITE_POOL_SIZE`).
    pub write_pool_size: usize,
    /// `statement_timeout` of a check, also the longest wait for a pool connection
    /// (`PGWS_AUTHZ_TIMEOUT`).
    pub check_timeout: Duration,
    /// `statement_timeout` of a write (`PGWS_AUTHZ_WRITE_TIMEOUT`).
    pub write_timeout: Duration,
    /// Writes one socket may have in flight (`PGWS_AUTHZ_WRITE_CONCURRENCY`).
    pub write_concurrency: usize,
    /// Most cached check results (`PGWS_AUTHZ_CACHE_SIZE`; 0: no cache).
    pub cache_size: usize,
    /// Re-check every open client this often (`PGWS_AUTHZ_RECHECK_INTERVAL`; `None`: only on
    /// revocation messages).
    pub recheck_interval: Option<Duration>,
}

/// Who a token is, for the database: its claims as `request.jwt.claims`, its role, and what a
/// revocation can name it by. Shared by reference count between the client, the registry and
/// the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// The claims as a JSON object text (the cache key: equal claims, equal rights).
    pub claims: Arc<str>,
    /// The role the checks and writes run as.
    pub role: Box<str>,
    /// `sub`, when a string.
    pub sub: Option<Box<str>>,
    /// `jti`, when a string.
    pub jti: Option<Box<str>>,
    /// `exp` (Unix seconds): cached results do not outlive it.
    pub exp: Option<f64>,
}

impl Subject {
    /// The subject of verified claims: the role from the role claim, else the anonymous role;
    /// a missing or unusable role is a refusal (before anything reaches the database).
    pub fn from_claims(
        claims: &Map<String, Value>,
        exp: Option<f64>,
        settings: &AuthzSettings,
    ) -> Result<Self, AuthzRefusal> {
        let role = match settings.role_claim.get(claims) {
            Some(Value::String(r)) => r.clone(),
            Some(_) => {
                return Err(AuthzRefusal::Forbidden(
                    "the token's role claim is not a string".into(),
                ));
            }
            None => match &settings.anon_role {
                Some(anon) => anon.clone(),
                None => {
                    return Err(AuthzRefusal::Forbidden(
                        "the token has no role claim and no anonymous role is configured".into(),
                    ));
                }
            },
        };
        check_role(&role)?;
        let text = |key: &str| {
            claims
                .get(key)
                .and_then(Value::as_str)
                .map(|s| s.to_string().into_boxed_str())
        };
        Ok(Self {
            claims: Value::Object(claims.clone()).to_string().into(),
            role: role.into_boxed_str(),
            sub: text("sub"),
            jti: text("jti"),
            exp,
        })
    }
}

/// A role name PostgreSQL can take as it is: not empty, at most 63 bytes (PostgreSQL would
/// truncate a longer one, possibly to another role's name), no NUL (text cannot hold it).
fn check_role(role: &str) -> Result<(), AuthzRefusal> {
    if role.is_empty() {
        return Err(AuthzRefusal::Forbidden("the token's role is empty".into()));
    }
    if role.len() > MAX_ROLE_BYTES {
        return Err(AuthzRefusal::Forbidden(format!(
            "the token's role is longer than PostgreSQL's 63-byte limit ({} bytes)",
            role.len()
        )));
    }
    if role.contains('\0') {
        return Err(AuthzRefusal::Forbidden(
            "the token's role contains a NUL character".into(),
        ));
    }
    Ok(())
}

/// The metrics of authorization (registered in `/metrics` as `pgws_authz_*`).
#[derive(Debug, Clone)]
pub struct AuthzMetrics {
    /// Checks answered from the cache.
    pub cache_hits: Counter,
    /// Checks that went to the database.
    pub cache_misses: Counter,
    /// Entries in the cache now.
    pub cache_entries: Gauge,
    /// Check outcomes: `allowed`, `refused`, `error`.
    pub checks: Family<ReasonLabel, Counter>,
    /// Seconds a database check took.
    pub check_latency: Histogram,
    /// Revocation messages received.
    pub revocations: Counter,
    /// Open clients closed because a re-check refused them.
    pub revoked: Counter,
    /// Write outcomes: `ok`, `refused`, `timeout`, `error`, `busy`.
    pub writes: Family<ReasonLabel, Counter>,
    /// Seconds a write call took.
    pub write_latency: Histogram,
    /// Pool connections discarded because their state was not known to be clean.
    pub discarded: Counter,
}

impl Default for AuthzMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthzMetrics {
    /// Metrics with their histogram buckets.
    pub fn new() -> Self {
        let buckets = [
            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Self {
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_entries: Gauge::default(),
            checks: Family::default(),
            check_latency: Histogram::new(buckets),
            revocations: Counter::default(),
            revoked: Counter::default(),
            writes: Family::default(),
            write_latency: Histogram::new(buckets),
            discarded: Counter::default(),
        }
    }
}

impl crate::ops::metrics::Register for AuthzMetrics {
    /// Registers every metric under `authz_`.
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("authz");
        r.register(
            "cache_hits",
            "Channel checks answered from the cache",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Channel checks that went to the database",
            self.cache_misses.clone(),
        );
        r.register(
            "cache_entries",
            "Cached channel check results",
            self.cache_entries.clone(),
        );
        r.register(
            "checks",
            "Database channel checks by outcome (allowed, refused, error)",
            self.checks.clone(),
        );
        r.register(
            "check_seconds",
            "Seconds a database channel check took",
            self.check_latency.clone(),
        );
        r.register(
            "revocations",
            "Revocation control messages received",
            self.revocations.clone(),
        );
        r.register(
            "revoked_clients",
            "Open clients closed because a re-check refused them",
            self.revoked.clone(),
        );
        r.register(
            "writes",
            "Write function calls by outcome (ok, refused, timeout, error, busy)",
            self.writes.clone(),
        );
        r.register(
            "write_seconds",
            "Seconds a write function call took",
            self.write_latency.clone(),
        );
        r.register(
            "connections_discarded",
            "Pool connections discarded because their state after an error or timeout was unknown",
            self.discarded.clone(),
        );
    }
}

impl AuthzMetrics {
    fn outcome(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Authorization by the database: the pools, the cache, the registry of open clients.
pub struct Authorizer {
    settings: AuthzSettings,
    checks: pool::Pool,
    writes: pool::Pool,
    cache: cache::Cache,
    registry: revoke::Registry,
    metrics: AuthzMetrics,
}

impl Authorizer {
    /// Builds the pools (connecting lazily) and starts the periodic re-check, if set.
    pub fn start(
        db: &crate::pg::Database,
        settings: AuthzSettings,
        metrics: AuthzMetrics,
        stop: tokio_util::sync::CancellationToken,
    ) -> Arc<Self> {
        let checks = pool::Pool::new(db, settings.pool_size, metrics.discarded.clone());
        let writes = pool::Pool::new(db, settings.write_pool_size, metrics.discarded.clone());
        let authorizer = Arc::new(Self {
            cache: cache::Cache::new(settings.cache_size, metrics.cache_entries.clone()),
            registry: revoke::Registry::default(),
            settings,
            checks,
            writes,
            metrics,
        });
        if let Some(every) = authorizer.settings.recheck_interval {
            tokio::spawn(revoke::periodic(Arc::downgrade(&authorizer), every, stop));
        }
        authorizer
    }

    /// Whether client messages go to the write function instead of NOTIFY.
    pub fn writes(&self) -> bool {
        self.settings.write_function.is_some()
    }

    /// Admission: the subject of `grant` and, when a check function is set, a check of every
    /// channel in `mode` (concurrently; the first refusal wins).
    pub async fn admit(
        &self,
        grant: &Grant,
        channels: &[ChannelName],
        mode: &str,
    ) -> Result<Arc<Subject>, AuthzRefusal> {
        let subject = Arc::new(Subject::from_claims(
            &grant.claims,
            grant.exp,
            &self.settings,
        )?);
        if self.settings.check_function.is_some() {
            let checks = channels
                .iter()
                .map(|c| self.check(&subject, c.as_str(), mode));
            for result in futures_util::future::join_all(checks).await {
                result?;
            }
        }
        Ok(subject)
    }

    /// May `subject` use `channel` in `mode` (`r`, `w`, `rw`)? From the cache when it knows,
    /// else from the check function (an allowed answer is cached). `Ok` when no check function
    /// is set. The entry point for run-time subscribes (protocol v2).
    pub async fn check(
        &self,
        subject: &Arc<Subject>,
        channel: &str,
        mode: &str,
    ) -> Result<(), AuthzRefusal> {
        if self.settings.check_function.is_none() {
            return Ok(());
        }
        if self.cache.allowed(subject, channel, mode) {
            self.metrics.cache_hits.inc();
            return Ok(());
        }
        self.metrics.cache_misses.inc();
        self.check_uncached(subject, channel, mode).await
    }

    /// Asks the database, whatever the cache holds; caches an allowed answer.
    pub async fn check_uncached(
        &self,
        subject: &Arc<Subject>,
        channel: &str,
        mode: &str,
    ) -> Result<(), AuthzRefusal> {
        let Some(function) = &self.settings.check_function else {
            return Ok(());
        };
        let started = Instant::now();
        let result = check::run(
            &self.checks,
            function,
            subject,
            channel,
            mode,
            self.settings.check_timeout,
        )
        .await;
        self.metrics
            .check_latency
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(()) => "allowed",
            Err(AuthzRefusal::Forbidden(_)) => "refused",
            Err(AuthzRefusal::Unavailable(_)) => "error",
        };
        AuthzMetrics::outcome(&self.metrics.checks, outcome);
        match &result {
            Ok(()) => self.cache.insert(subject, channel, mode),
            Err(e) => tracing::info!(
                role = %subject.role,
                sub = subject.sub.as_deref().unwrap_or(""),
                channel,
                mode,
                error = %e,
                "channel check refused"
            ),
        }
        result
    }

    /// Registers an open client (for revocations and the periodic re-check, which check its
    /// channels in `mode`: the mode admission checked them in); the returned value unregisters
    /// it when dropped.
    pub fn attach(
        self: &Arc<Self>,
        id: u64,
        subject: Arc<Subject>,
        channels: &[ChannelName],
        mode: &'static str,
        outbox: &Arc<Outbox>,
    ) -> Attached {
        revoke::attach(self, id, subject, channels, mode, outbox)
    }

    /// A revocation from the control plane (the handler [`crate::control::Plane::on_revoke`]
    /// calls): counted, logged, applied.
    pub fn revoked(self: &Arc<Self>, revocation: crate::control::Revocation) {
        let selector: Selector = revocation;
        self.metrics.revocations.inc();
        tracing::info!(?selector, "revocation received");
        self.revoke(selector);
    }

    /// Drops the cached results `selector` matches and re-checks the open clients it matches,
    /// closing those no longer allowed (in a task of its own).
    pub fn revoke(self: &Arc<Self>, selector: Selector) {
        self.cache.drop_matching(&selector);
        let this = self.clone();
        tokio::spawn(async move { revoke::recheck(&this, &selector).await });
    }

    /// Closes the pools' idle connections (at shutdown).
    pub async fn close(&self) {
        self.checks.close().await;
        self.writes.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> AuthzSettings {
        AuthzSettings {
            check_function: None,
            write_function: None,
            role_claim: ClaimPath::new("role"),
            anon_role: None,
            pool_size: 1,
            write_pool_size: 1,
            check_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            write_concurrency: 1,
            cache_size: 10,
            recheck_interval: None,
        }
    }

    #[test]
    fn function_names_are_quoted_identifiers() {
        assert_eq!(
            FunctionName::parse("api.can_use").unwrap().quoted(),
            "\"api\".\"can_use\""
        );
        assert_eq!(
            FunctionName::parse("x\"; DROP TABLE t; --")
                .unwrap()
                .quoted(),
            "\"x\"\"; DROP TABLE t; --\""
        );
        assert!(FunctionName::parse("a.b.c").is_err());
        assert!(FunctionName::parse("a.").is_err());
        assert!(FunctionName::parse("a\0b").is_err());
    }

    #[test]
    fn the_role_comes_from_the_claim_or_the_anonymous_role() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        let mut s = settings();
        let subject = Subject::from_claims(
            &claims(json!({"role":"web_user","sub":"alice","jti":"t1"})),
            Some(5.0),
            &s,
        )
        .unwrap();
        assert_eq!(&*subject.role, "web_user");
        assert_eq!(subject.sub.as_deref(), Some("alice"));
        assert_eq!(subject.jti.as_deref(), Some("t1"));
        let forbidden =
            |r: Result<Subject, AuthzRefusal>| matches!(r, Err(AuthzRefusal::Forbidden(_)));
        assert!(forbidden(Subject::from_claims(
            &claims(json!({})),
            None,
            &s
        )));
        assert!(forbidden(Subject::from_claims(
            &claims(json!({"role":7})),
            None,
            &s
        )));
        assert!(forbidden(Subject::from_claims(
            &claims(json!({"role":"a\u{0}b"})),
            None,
            &s
        )));
        let long = "r".repeat(64);
        assert!(forbidden(Subject::from_claims(
            &claims(json!({"role":long})),
            None,
            &s
        )));
        assert!(forbidden(Subject::from_claims(
            &claims(json!({"role":""})),
            None,
            &s
        )));
        s.anon_role = Some("anon".into());
        let anon = Subject::from_claims(&claims(json!({"sub":"x"})), None, &s).unwrap();
        assert_eq!(&*anon.role, "anon");
        s.role_claim = ClaimPath::new("/app/role");
        let nested =
            Subject::from_claims(&claims(json!({"app":{"role":"deep"}})), None, &s).unwrap();
        assert_eq!(&*nested.role, "deep");
    }
}
