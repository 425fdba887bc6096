//! Admission: may this request become a client? One function, [`admit`], that every transport
//! calls before it accepts (the websocket handshake today, Server-Sent Events next), so that the
//! rules and their order are the same for all of them:
//!
//! 1. the browser `Origin` (`PGWS_ALLOWED_ORIGINS`) → 403;
//! 2. the client address's connection rate (`PGWS_RATE_CONNECTIONS`, except for
//!    `PGWS_RATE_CONNECTIONS_EXEMPT`) → 429;
//! 3. the token (path, `Authorization: Bearer`, or the `bearer.<token>` subprotocol) and what it
//!    grants (spec §2.2, §3) → 400 with the original's texts;
//! 4. the channel names ([`crate::channel`]) and their number (`PGWS_MAX_CHANNELS`) → 400;
//! 5. the source: no client is admitted while no source is connected (the database is absent at
//!    start-up, or the LISTEN connection is lost and not back yet) → 503 with `Retry-After`. A
//!    request during the first connection attempt waits for its outcome (at most
//!    [`START_UP_WAIT`]), so that a restart does not refuse the clients that reconnect at once;
//! 6. the server's capacity (`PGWS_MAX_CONNECTIONS`) → 503;
//! 7. authorization by the database, when on (`PGWS_AUTHZ_FUNCTION`, [`crate::authz`]): the
//!    token's role, then a check of every channel in the mode of what the client can do with it
//!    ([`check_mode`]: `r` for streams and v2 sockets, `w` for publishes) → 403 with the reason, or
//!    503 with `Retry-After` when the check cannot run. After the server's rules, so that a
//!    server that refuses anyway spends no database round trip; before the subject's slot;
//! 8. a slot for the token's `sub` (`PGWS_MAX_CONNECTIONS_PER_SUBJECT`) → 429.
//!
//! Why this order: the cheap rules that stop abuse come first (the rate before the token's
//! signature is checked), then the permanent answers about the request itself (a bad token or
//! channel is `400` whatever the server's state, so a client does not retry it for ever), then the
//! transient ones about the server (`503`: retry later), and last the one that takes a resource.
//!
//! A refusal is a typed [`Refusal`]; each transport renders it (an HTTP status with the reason as
//! its body, and [`Refusal::retry_after`] as `Retry-After`, today). Admission logs and counts no
//! refusal itself: the caller does, once, with the refusal's [`Refusal::label`], so that the
//! metrics label and the log line agree. What it does note is a peer that sends forwarding
//! headers without being in `PGWS_TRUSTED_PROXIES` (see [`client_address`]).
//!
//! What it owns: the rules above and their order, reading the token, the channels, the
//! resume position and the client's address out of the request, and the HTTP rendering of a
//! refusal ([`refuse`]). What it must never do: accept a connection or answer a handshake
//! (the transports do, after it said yes), import a transport or the HTTP dispatcher (they
//! import it: admission sits below them), or keep anything of a refused request. A caller
//! may rely on an [`Admitted`] having passed every rule of its [`Purpose`], with its
//! subject's slot already held (dropping it gives the slot back).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use crate::address::AddressSet;
use crate::auth::{self, AuthError, Grant};
use crate::authz::AuthzRefusal;
use crate::channel::{ChannelName, ChannelNameError};
use crate::ops::limits::SubjectSlot;
use crate::ops::metrics::ReasonLabel;
use crate::respond::{Body, text};
use crate::rows::subscribe::{RowsRefusal, filter_of_query, prepare};
use crate::state::AppState;
use crate::stream::ResumeFrom;

/// The subprotocol a browser offers next to `bearer.<token>`, and that pgws answers with.
///
/// A browser cannot set `Authorization` on a websocket, so the token rides in the
/// subprotocol list; the server must then answer with one subprotocol the client offered,
/// and `bearer.<token>` must never be echoed (it would land in logs and proxies).
pub const SUBPROTOCOL: &str = "pgws";

/// How long a request that arrives during the first connection attempt waits for its outcome.
///
/// 5 s: a local database answers in milliseconds, a remote one in well under this; past
/// it a client is better told 503 with `Retry-After` than left hanging.
pub const START_UP_WAIT: Duration = Duration::from_secs(5);

/// The `Retry-After` of a refusal while no source is connected, in seconds.
///
/// 5 s: long enough that a crowd of refused clients does not hammer a server whose
/// database is away, short enough that they are back soon after it returns.
pub const SOURCE_DOWN_RETRY_AFTER: u32 = 5;

/// The `Retry-After` of a refusal because the authorization check could not run, in seconds.
///
/// 1 s: the check failed for want of a connection or a time-out, which usually clears
/// at once; the database is there (the source is up).
pub const AUTHZ_RETRY_AFTER: u32 = 1;

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// The URL path (`/:channel/:token`, `/:token`), as the original.
    Path,
    /// `Authorization: Bearer <token>`; the path is `/:channel` or `/`.
    Header,
    /// `Sec-WebSocket-Protocol: pgws, bearer.<token>`; answered with `pgws`.
    Subprotocol,
}

/// A request that may become a client.
pub struct Admitted {
    /// What the token grants (its `channels` are checked: see `channels`).
    pub grant: Grant,
    /// The granted channels as checked names, in grant order.
    pub channels: Vec<ChannelName>,
    /// Where the token was.
    pub carrier: Carrier,
    /// The client's address (behind trusted proxies: from `X-Forwarded-For`).
    pub ip: IpAddr,
    /// Held while the client is connected (per-subject limit).
    // Moved into the client: the slot is given back when the client is dropped, however it
    // ends.
    pub slot: Option<SubjectSlot>,
    /// Where the client asks to resume from: the `Last-Event-ID` header (sent by browsers'
    /// `EventSource` when it reconnects) or the `last-event-id` query parameter (websockets).
    pub resume: Option<ResumeFrom>,
    /// Row subscriptions of table channels (an event stream's filter), by channel; the other
    /// channels are followed whole.
    pub views: Vec<(ChannelName, crate::stream::View)>,
    /// The client asked for positions (`last-event-id` in the query, even empty). Event streams
    /// always carry them.
    pub positions: bool,
    /// The websocket negotiated protocol v2 ([`crate::session::v2`]): `channels` is empty (it
    /// subscribes in band) and the grant's channels are the token's alone (empty: any channel).
    pub v2: bool,
    /// Who the token is for the database (authorization by the database on), its channels
    /// checked.
    pub subject: Option<std::sync::Arc<crate::authz::Subject>>,
    /// The mode authorization by the database checked the channels in, and re-checks them in
    /// ([`check_mode`]).
    // A `&'static str` (`"r"`, `"w"`, `"rw"`): it is passed as a bound parameter to the
    // authorization function on every re-check.
    pub authz_mode: &'static str,
}

/// Why a request may not become a client. `Display` is the reason a client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The `Origin` is not in `PGWS_ALLOWED_ORIGINS`.
    #[error("Origin not allowed: {0}")]
    Origin(String),
    /// Too many new connections from this address.
    #[error("Too many connections from this address: at most {0} per second")]
    RateLimited(u32),
    /// The token was refused.
    #[error("{0}")]
    Token(AuthError),
    /// A granted channel name is unusable.
    #[error("{}", .0.client_text())]
    BadChannel(ChannelNameError),
    /// More channels than `PGWS_MAX_CHANNELS`.
    #[error("Error: too many channels: {count} (at most {max})")]
    TooManyChannels {
        /// Channels granted.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// No source is connected: no notification could reach the client.
    #[error(
        "Service unavailable: pgws is not connected to the database (notifications cannot be received); retry in {0} s"
    )]
    SourceDown(u32),
    /// `PGWS_MAX_CONNECTIONS` reached.
    #[error("Too many connections: this server accepts at most {0}")]
    ServerFull(usize),
    /// `PGWS_MAX_CONNECTIONS_PER_SUBJECT` reached for the token's `sub`.
    #[error("Too many connections for this token subject: at most {0}")]
    SubjectFull(usize),
    /// Authorization by the database refused a channel (403) or could not run (503).
    #[error("{0}")]
    Authz(AuthzRefusal),
    /// A table channel's row subscription (the URL's filter) cannot be made.
    #[error("Error: {0}")]
    Rows(RowsRefusal),
}

impl Refusal {
    /// The HTTP status that says it.
    ///
    /// 400 for what the request itself got wrong (retrying will not help), 429 and 503 for
    /// what may pass later, 403 for what a policy forbids.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Origin(_) => StatusCode::FORBIDDEN,
            Self::RateLimited(_) | Self::SubjectFull(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Token(_) | Self::BadChannel(_) | Self::TooManyChannels { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::SourceDown(_) | Self::ServerFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Authz(AuthzRefusal::Forbidden(_)) => StatusCode::FORBIDDEN,
            Self::Authz(AuthzRefusal::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Rows(RowsRefusal::UnknownTable(_)) => StatusCode::NOT_FOUND,
            Self::Rows(RowsRefusal::BadFilter(_)) => StatusCode::BAD_REQUEST,
            Self::Rows(RowsRefusal::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Rows(RowsRefusal::NeedsV2) => StatusCode::FORBIDDEN,
        }
    }

    /// Seconds after which the same request may succeed (`Retry-After`), when that is known.
    ///
    /// Only where the server knows when a retry can succeed (the source reconnects, a check
    /// that can run again); a rate limit or a full server gives none, since when room frees
    /// up there depends on other clients.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Self::SourceDown(seconds) => Some(*seconds),
            Self::Authz(AuthzRefusal::Unavailable(_)) => Some(AUTHZ_RETRY_AFTER),
            _ => None,
        }
    }

    /// The `reason` label of the refusal metric.
    ///
    /// Stable strings: they are Prometheus label values that dashboards and alerts use.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Origin(_) => "origin",
            Self::RateLimited(_) => "rate_limited",
            Self::Token(AuthError::Expired) => "expired",
            Self::Token(AuthError::MissingMode) => "missing_mode",
            Self::Token(AuthError::NoAllowedChannels) => "no_allowed_channels",
            Self::Token(AuthError::Invalid(_)) => "invalid_token",
            Self::BadChannel(_) => "bad_channel",
            Self::TooManyChannels { .. } => "too_many_channels",
            Self::SourceDown(_) => "source_down",
            Self::ServerFull(_) => "too_many_connections",
            Self::SubjectFull(_) => "too_many_for_subject",
            Self::Authz(AuthzRefusal::Forbidden(_)) => "authz_refused",
            Self::Authz(AuthzRefusal::Unavailable(_)) => "authz_unavailable",
            Self::Rows(_) => "row_subscription",
        }
    }
}

/// What a request wants to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A client that stays connected (websocket, event stream): every rule.
    Connect,
    /// A one-shot HTTP publish: without the three rules about staying connected (a receiving
    /// source, server capacity, the subject's open connections). A publish needs the NOTIFY
    /// pool, not the LISTEN connection, and answers `503` itself when the database does not
    /// take the message.
    Publish,
}

/// Runs every admission rule for `purpose`, in order.
pub async fn admit<B>(
    req: &Request<B>,
    state: &AppState,
    peer: SocketAddr,
    purpose: Purpose,
) -> Result<Admitted, Refusal> {
    let settings = &state.config;
    // The rules in the order of the module header; each returns at the first refusal, so a
    // request costs only the checks up to its refusal.
    check_origin(req, settings.allowed_origins.as_deref()).map_err(Refusal::Origin)?;
    let ip = client_address(req, state, peer);
    if !state.address_limiter.allow(ip) {
        return Err(Refusal::RateLimited(settings.rates.connections));
    }
    // Read before the token: protocol v2 reads its grant differently (no channel in the
    // path, channels subscribed in band).
    let v2 = purpose == Purpose::Connect && negotiated_v2(req);
    let (grant, carrier) = authorize(req, state, v2).map_err(Refusal::Token)?;
    let channels = granted_channels(state, &grant, v2)?;
    if purpose == Purpose::Connect {
        connect_rules(state).await?;
    }
    // `!is_upgrade`: a connecting request that is not a websocket is an event stream.
    let authz_mode = check_mode(purpose, v2, !is_upgrade(req), &grant);
    let subject = database_checks(state, &grant, &channels, authz_mode).await?;
    let views = match purpose {
        Purpose::Connect if !v2 => row_views(req, state, &channels).await?,
        _ => Vec::new(),
    };
    // Last: it is the only rule that takes something, so a request refused by any other
    // rule never holds (or has to give back) a slot.
    let slot = match purpose {
        Purpose::Connect => subject_slot(state, &grant)?,
        Purpose::Publish => None,
    };
    let (resume, positions) = match purpose {
        // A v2 socket resumes per subscription, in band, not at the handshake.
        Purpose::Connect if !v2 => resume_request(req),
        _ => (None, false),
    };
    if let Some(ResumeFrom::At(p)) = resume {
        // A position of this stream that this node has not read yet (it restarted and is
        // rebuilding its windows, or the client comes from a node a little ahead): wait for it
        // rather than answer "future position".
        state.hub.wait_for(p, CATCH_UP_WAIT).await;
    }
    Ok(Admitted {
        grant,
        channels,
        carrier,
        ip,
        slot,
        resume,
        positions,
        v2,
        subject,
        authz_mode,
        views,
    })
}

/// The row subscriptions of the URL's table channels, filtered by its query string (see
/// [`filter_of_query`]): the same filter for each table channel the URL names.
async fn row_views<B>(
    req: &Request<B>,
    state: &AppState,
    channels: &[ChannelName],
) -> Result<Vec<(ChannelName, crate::stream::View)>, Refusal> {
    let mut views = Vec::new();
    let tables = channels.iter().filter(|c| crate::channel::is_table(c));
    for channel in tables {
        // Per-row authorization reaches v2 subscriptions only: an event stream or a compat
        // socket would otherwise see every row of the table.
        if state.rls.is_some() {
            return Err(Refusal::Rows(RowsRefusal::NeedsV2));
        }
        let filter = filter_of_query(req.uri().query());
        let prepared = prepare(state.catalog.as_deref(), channel, &filter)
            .await
            .map_err(Refusal::Rows)?;
        views.push((channel.clone(), prepared.sub.into_view()));
    }
    Ok(views)
}

/// The mode authorization by the database checks a client's channels in (at admission and at
/// every re-check): what the client can do with them. A publish writes (`w`). An event stream
/// and a protocol v2 socket only read their channels (`r`; a v2 publish is checked in `w` on its
/// own, per request), whatever the token's mode. An original-protocol websocket reads and writes
/// the channels of its URL as its token says, so it is checked in the token's mode
/// (docs/AUTHORIZATION.md, "Mode").
pub(crate) fn check_mode(purpose: Purpose, v2: bool, stream: bool, grant: &Grant) -> &'static str {
    match purpose {
        Purpose::Publish => "w",
        Purpose::Connect if v2 || stream => "r",
        Purpose::Connect => grant.mode.as_str(),
    }
}

/// Rule 7, authorization by the database (when on): the token's subject, then every channel in
/// `mode`. `Ok(None)` when it is off. Shared with the `pgws-check` answer, so that it refuses
/// exactly what a handshake refuses.
pub(crate) async fn database_checks(
    state: &AppState,
    grant: &Grant,
    channels: &[ChannelName],
    mode: &str,
) -> Result<Option<std::sync::Arc<crate::authz::Subject>>, Refusal> {
    match &state.authz {
        Some(authz) => Ok(Some(
            authz
                .admit(grant, channels, mode)
                .await
                .map_err(Refusal::Authz)?,
        )),
        None => Ok(None),
    }
}

/// The granted channels as checked names, within `PGWS_MAX_CHANNELS` (rule 4). Protocol v2
/// (`v2`) has none at admission: it subscribes in band.
pub(crate) fn granted_channels(
    state: &AppState,
    grant: &Grant,
    v2: bool,
) -> Result<Vec<ChannelName>, Refusal> {
    // Checked here once (rule 4), so that every later step works with valid names.
    let channels = if v2 {
        Vec::new()
    } else {
        grant
            .channels
            .iter()
            .map(|c| ChannelName::new(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Refusal::BadChannel)?
    };
    let max = state.config.max_channels;
    if channels.len() > max {
        return Err(Refusal::TooManyChannels {
            count: channels.len(),
            max,
        });
    }
    Ok(channels)
}

/// How long a resume from a position not read yet waits for this node to read it.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The rules only a client that stays connected passes: a receiving source, server capacity.
async fn connect_rules(state: &AppState) -> Result<(), Refusal> {
    state.source.settled(START_UP_WAIT).await;
    if !state.source.is_up() {
        return Err(Refusal::SourceDown(SOURCE_DOWN_RETRY_AFTER));
    }
    let max = state.config.max_connections;
    // A relaxed read: two handshakes at once may both pass at the limit; capacity is a
    // guard against overload, not an exact quota, and a lock here would serialise every
    // handshake.
    if state.active.load(Ordering::Relaxed) >= max {
        return Err(Refusal::ServerFull(max));
    }
    Ok(())
}

/// A slot for the token's `sub`, when the per-subject limit is on.
fn subject_slot(state: &AppState, grant: &Grant) -> Result<Option<SubjectSlot>, Refusal> {
    match grant.claims.get("sub").and_then(|s| s.as_str()) {
        Some(sub) => state
            .subjects
            // `Ok(None)` when the limit is off; `Err` when the subject holds all its slots.
            .acquire(sub)
            .ok_or(Refusal::SubjectFull(state.config.rates.per_subject)),
        None => Ok(None),
    }
}

/// Longest `Last-Event-ID` read (anything longer is not a position and is answered as one).
///
/// Larger than any valid position (64 characters), so an over-long value is named
/// `Unknown` (answered with a gap) without being parsed, whatever its length.
const MAX_RESUME_TEXT: usize = 256;

/// Reads where the client resumes from: the `last-event-id` query parameter, else the
/// `Last-Event-ID` header. An empty value asks for positions without resuming.
fn resume_request<B>(req: &Request<B>) -> (Option<ResumeFrom>, bool) {
    let query = req.uri().query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == "last-event-id").then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    });
    // The query wins over the header: a websocket cannot send `Last-Event-ID`, and a
    // browser's `EventSource` sends the header only when it reconnects by itself.
    let positions = query.is_some();
    let text = query.or_else(|| {
        req.headers()
            .get("last-event-id")
            // A header that is not visible ASCII is not a position: a replacement character
            // makes it parse as `Unknown` (a gap), not as "no resume".
            .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
    });
    let resume = text.filter(|t| !t.trim().is_empty()).map(|t| {
        if t.len() > MAX_RESUME_TEXT {
            ResumeFrom::Unknown
        } else {
            ResumeFrom::parse(&t)
        }
    });
    (resume, positions)
}

/// Finds the token: the `Authorization` header, the subprotocol pair, or the URL path.
fn token_and_channel<B>(
    req: &Request<B>,
) -> Result<(Option<Cow<'_, str>>, String, Carrier), AuthError> {
    let path = req.uri().path();
    let header_token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                // The scheme is case-insensitive (RFC 9110 §11.1); these are the two spellings
                // clients actually send.
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| (t.trim().to_string(), Carrier::Header));
    let protocol_token = || {
        let offered: Vec<&str> = req
            .headers()
            .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let token = offered.iter().find_map(|p| p.strip_prefix("bearer."))?;
        Some(
            if offered.contains(&SUBPROTOCOL) || offered.contains(&crate::wire::v2::SUBPROTOCOL) {
                Ok((token.to_string(), Carrier::Subprotocol))
            } else {
                Err(AuthError::Invalid(format!(
                    "offer the subprotocol '{SUBPROTOCOL}' next to 'bearer.<token>'"
                )))
            },
        )
    };
    // Precedence: the header, then the subprotocol, then the path. A token outside the
    // path leaves the path's first segment as the channel.
    let outside = match header_token {
        Some(t) => Some(t),
        None => protocol_token().transpose()?,
    };
    match outside {
        Some((token, carrier)) => {
            let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
            let channel = if first.is_empty() {
                None
            } else {
                Some(
                    percent_encoding::percent_decode_str(first)
                        .decode_utf8()
                        .map_err(|_| {
                            AuthError::Invalid(
                                "channel name is not valid percent-encoded UTF-8".into(),
                            )
                        })?,
                )
            };
            Ok((channel, token, carrier))
        }
        None => {
            let (channel, token) = auth::parse_path(path)?;
            Ok((channel, token.to_string(), Carrier::Path))
        }
    }
}

/// Verifies the token (spec §2.2, §3). Protocol v2 (`v2`) ignores the path's channel: its
/// grant is the token's channels (see [`auth::verify`]).
pub(crate) fn authorize<B>(
    req: &Request<B>,
    state: &AppState,
    v2: bool,
) -> Result<(Grant, Carrier), AuthError> {
    let (channel, token, carrier) = token_and_channel(req)?;
    if v2 {
        let grant = auth::verify(
            &state.keys(),
            &state.config.rules,
            &token,
            auth::now_seconds(),
        )?;
        return Ok((grant, carrier));
    }
    let grant = auth::resolve(
        &state.keys(),
        &state.config.rules,
        channel.as_deref(),
        &token,
        auth::now_seconds(),
    )?;
    Ok((grant, carrier))
}

/// The client's address as [`client_ip`] finds it; a request with forwarding headers from a peer
/// that is not a trusted proxy is noted ([`crate::ops::limits::ForwardedHeaders`]).
pub(crate) fn client_address<B>(req: &Request<B>, state: &AppState, peer: SocketAddr) -> IpAddr {
    let trusted = &state.config.trusted_proxies;
    let ip = client_ip(req, peer, trusted);
    if !trusted.contains(peer.ip()) && has_forwarding_headers(req) {
        let exempt = state.address_limiter.is_exempt(ip);
        state.forwarded.ignored(ip, exempt);
    }
    ip
}

/// Whether the request names an original client (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`).
fn has_forwarding_headers<B>(req: &Request<B>) -> bool {
    ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|h| req.headers().contains_key(*h))
}

/// The client's address: the peer, or, behind a trusted proxy, the last untrusted address of
/// `X-Forwarded-For`. IPv4 peers of a dual-stack socket are given as IPv4.
pub(crate) fn client_ip<B>(req: &Request<B>, peer: SocketAddr, trusted: &AddressSet) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    req.headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        // From the right: each trusted proxy appends the address it saw, so the first
        // untrusted one from the right is the client; anything left of it may be forged.
        .rev()
        .find(|ip| !trusted.contains(*ip))
        .unwrap_or(peer)
}

/// `Err(origin)` when the request's Origin is not allowed.
pub(crate) fn check_origin<B>(req: &Request<B>, allowed: Option<&[String]>) -> Result<(), String> {
    let (Some(allowed), Some(origin)) = (allowed, req.headers().get(hyper::header::ORIGIN)) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed
        .iter()
        // Origins are compared whole (scheme, host and port), case-insensitively. A request
        // without `Origin` (not a browser) passes: the rule only stops other sites' pages.
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err(origin.to_string())
    }
}

/// Renders a refusal as HTTP (status, reason as the body), logged and counted once.
pub(crate) fn refuse(state: &AppState, peer: SocketAddr, refusal: Refusal) -> Response<Body> {
    let body = refusal.to_string();
    tracing::info!(peer = %peer, reason = %body, "Rejecting Request");
    state
        .metrics
        .refused
        .get_or_create(&ReasonLabel {
            reason: refusal.label(),
        })
        .inc();
    let mut response = text(refusal.status(), body);
    if let Some(seconds) = refusal.retry_after() {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Whether a websocket request offers protocol v2 (`Sec-WebSocket-Protocol: pgws.v2`, possibly
/// next to `bearer.<token>`). It wins over `pgws` when both are offered.
fn negotiated_v2<B>(req: &Request<B>) -> bool {
    is_upgrade(req)
        && req
            .headers()
            .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == crate::wire::v2::SUBPROTOCOL)
}

/// Whether a request asks for a websocket (any path, spec §2.1).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(xff: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/chat/x");
        if let Some(v) = xff {
            b = b.header("x-forwarded-for", v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let proxy: SocketAddr = "[::ffff:10.0.0.2]:5000".parse().unwrap();
        let trusted = AddressSet::parse("10.0.0.0/24").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A dual-stack socket's IPv4 peer is IPv4, trusted or not.
        assert_eq!(
            client_ip(&request(None), proxy, &AddressSet::none()),
            ip("10.0.0.2")
        );
        let forged = request(Some("203.0.113.9"));
        assert_eq!(
            client_ip(&forged, proxy, &AddressSet::none()),
            ip("10.0.0.2")
        );
        // The last address that is not a proxy, however many proxies are chained.
        let chained = request(Some("198.51.100.1, 203.0.113.9, 10.0.0.7"));
        assert_eq!(client_ip(&chained, proxy, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(&request(None), proxy, &trusted), ip("10.0.0.2"));
        assert!(has_forwarding_headers(&forged) && !has_forwarding_headers(&request(None)));
    }

    #[test]
    fn a_source_down_refusal_says_when_to_retry() {
        let r = Refusal::SourceDown(SOURCE_DOWN_RETRY_AFTER);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((r.label(), r.retry_after()), ("source_down", Some(5)));
        assert!(r.to_string().contains("not connected to the database"));
        assert_eq!(Refusal::ServerFull(1).retry_after(), None);
    }
}
