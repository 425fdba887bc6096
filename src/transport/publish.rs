//! HTTP publish, the write-side companion of Server-Sent Events: `POST /:channel/:token` (or
//! `/:token`, or the token in `Authorization: Bearer`) with the message as a `text/plain` body
//! publishes exactly as a websocket message would: same admission, same envelope, same modes
//! (`w`/`rw`), same size limits.
//!
//! Only `POST` with `Content-Type: text/plain` is a publish (what `fetch(url, {method: "POST",
//! body: "hi"})` and `curl -H 'Content-Type: text/plain' --data-binary …` send); any other POST
//! goes where it went before (`Hello, Web!`, the static site's `405`, or `PGWS_UPSTREAM`).
//!
//! The answer waits until PostgreSQL accepted the NOTIFY of every channel: `202` then means the
//! message is in the database's hands. NOTIFY gives no position back (the position is given when
//! the message comes back through LISTEN), so the answer has none.
//!
//! What it owns: reading and checking the body, and rendering the one publish call's outcome
//! ([`crate::publish::Publish`] through the publisher) as an HTTP status and body. What it
//! must never do: build an envelope or a NOTIFY itself (the client core's
//! [`crate::client::prepare`] does, so HTTP and sockets cannot drift apart), write to
//! PostgreSQL other than through the publisher, or hold a connection of the pool while it
//! waits for the body (the body is read, and bounded, first).
//!
//! What a caller may rely on: a message too large for any of its channels publishes nowhere
//! (every envelope is checked before the first is sent); a `503` after several channels may
//! leave the earlier ones published (each NOTIFY commits on its own), so a retry can repeat
//! them there. A `202` is never given before PostgreSQL took every channel's NOTIFY.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use crate::admission::Admitted;
use crate::client::prepare;
use crate::publish::{Publish, PublishError};
use crate::respond::{Body, full, text};
use crate::state::AppState;
use crate::wire::compat::ClaimsText;

/// How long a publish waits for PostgreSQL before answering `503`.
///
/// 10 s: above what a healthy pool takes under load (milliseconds), below the time-outs of
/// common proxies (nginx's 60 s) and of `fetch` users' patience, so the client hears a
/// clear `503` it can retry rather than a proxy's error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a request is an HTTP publish: `POST` with a `text/plain` body.
pub fn is_request<B>(req: &Request<B>) -> bool {
    req.method() == Method::POST
        && req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            // The media type alone: `text/plain; charset=utf-8` is a publish too. The body must be
            // UTF-8 whatever charset is named (checked below).
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/plain"))
}

/// A refused publish, as the reason a client reads and its status.
fn refused(
    state: &AppState,
    status: StatusCode,
    code: &'static str,
    reason: String,
) -> Response<Body> {
    // Info, not warn: a refused publish is the client's mistake, not the server's trouble.
    tracing::info!(code, reason = %reason, "publish refused");
    state
        .metrics
        .drops
        .get_or_create(&crate::ops::metrics::ReasonLabel { reason: code })
        .inc();
    text(status, reason)
}

/// Publishes the request's body to the admitted channels.
pub async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    admitted: Admitted,
) -> Response<Body> {
    // An id like a socket's: log lines match, and the publisher orders by it (one request's
    // channels in order).
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    // Checked before the body is read: a read-only token costs no body buffering.
    if !admitted.grant.mode.write {
        return refused(
            &state,
            StatusCode::FORBIDDEN,
            "read_only",
            "Error: this token does not allow writing (mode is not 'w' or 'rw')".into(),
        );
    }
    // A table's channel carries its table's changes only: a message published there could
    // pass for a row change.
    if let Some(table) = admitted
        .channels
        .iter()
        .find(|c| crate::channel::is_table(c))
    {
        return refused(
            &state,
            StatusCode::FORBIDDEN,
            "table_channel",
            format!(
                "Error: {table} is a table's channel, which carries its table's changes only: it cannot be published to"
            ),
        );
    }
    let max = state.config.max_message_size;
    // Bounded while it is read, not after: a client cannot make the server buffer more than
    // `PGWS_MAX_MESSAGE_SIZE` (the same limit as a websocket message).
    let body = match http_body_util::Limited::new(req.into_body(), max)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return refused(
                &state,
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_big",
                format!("Error: message larger than {max} bytes (PGWS_MAX_MESSAGE_SIZE)"),
            );
        }
        Err(e) => {
            // The client went away or broke the framing: not a refusal worth counting.
            tracing::debug!(conn = id, error = %e, "publish body not received");
            return text(
                StatusCode::BAD_REQUEST,
                "Error: the request body was not received",
            );
        }
    };
    let Ok(message) = std::str::from_utf8(&body) else {
        return refused(
            &state,
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
            "Error: the body is not valid UTF-8 text".into(),
        );
    };
    state.metrics.messages_in.inc();
    // With a write function the database decides and answers instead of a NOTIFY.
    if let (Some(authz), Some(subject)) = (&state.authz, &admitted.subject)
        && authz.writes()
    {
        return write_through_function(&state, id, authz, subject, &admitted, message).await;
    }
    let claims = ClaimsText::new(&admitted.grant.claims);
    // Every envelope first, then the sends: a too-large message is refused before anything
    // was published (no partial publish for a size error).
    let mut jobs = Vec::new();
    for prepared in prepare(&state, &admitted.channels, &claims, message) {
        match prepared {
            Err(too_large) => {
                return refused(
                    &state,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("Error: {}", too_large.message(message.len())),
                );
            }
            Ok((channel, out)) => jobs.push((channel.clone(), out)),
        }
    }
    let mut answers = Vec::with_capacity(jobs.len());
    // All handed to the pool before any answer is awaited: the channels' NOTIFYs go out
    // back to back and the request waits about one round trip, not one per channel.
    for (channel, out) in jobs {
        let pending = state
            .publisher
            .publish(
                id,
                Publish::Notify {
                    pg_channel: out.pg_channel,
                    payload: out.payload,
                    channel: Some(channel.to_string()),
                },
            )
            .await;
        answers.push(pending);
    }
    let published = answers.len();
    for pending in answers {
        // The first failure answers; the others' outcomes are dropped (the pool still logs
        // and counts them).
        if let Err(e) = pending.within(ANSWER_TIMEOUT).await {
            return unavailable(&e);
        }
    }
    let mut r = Response::new(full(
        // No position: NOTIFY gives none back (see the module header).
        serde_json::json!({"published": published}).to_string(),
    ));
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `PGWS_AUTHZ_WRITE_FUNCTION`: the function is called for each channel in turn, as the token's
/// role; `200` with `{"published": n, "results": [text or null, …]}` once every call committed,
/// else the first failure as the `Error` event's JSON (`sqlstate` included) with its status
/// (`400` raised, `403` role or privilege, `504` time-out, `503` unavailable).
async fn write_through_function(
    state: &AppState,
    id: u64,
    authz: &Arc<crate::authz::Authorizer>,
    subject: &Arc<crate::authz::Subject>,
    admitted: &Admitted,
    message: &str,
) -> Response<Body> {
    let mut results = Vec::with_capacity(admitted.channels.len());
    for channel in &admitted.channels {
        // `None` only when no write function is set, which the caller checked; stop rather
        // than publish a NOTIFY the configuration said not to.
        let Some(call) = authz.write_call(subject.clone(), channel.as_str(), message) else {
            break;
        };
        // No write slots: the request waits for each answer in turn anyway.
        let request = Publish::Write {
            slots: None,
            call: Box::pin(call),
        };
        // Two awaits: the first waits for room in the pool, the second for the function's
        // outcome. In turn, one channel at a time: the results keep the channels' order, and a
        // refusal stops the rest (what the function said no to may guard what follows).
        match state.publisher.publish(id, request).await.await {
            Ok(ack) => results.push(ack.result),
            Err(PublishError::Refused(e)) => {
                let mut r = Response::new(full(e.event(channel.as_str())));
                *r.status_mut() = e.status();
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                // Unavailable (pool or database down) is worth a retry; a refusal by the function
                // (400, 403) is not, so only 503 advises one.
                if e.status() == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return r;
            }
            Err(e) => return unavailable(&e),
        }
    }
    let mut r = Response::new(full(
        serde_json::json!({"published": results.len(), "results": results}).to_string(),
    ));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `503` for a message PostgreSQL did not take (or did not answer for in time), with the
/// outcome's text: the client may retry.
///
/// `Retry-After: 1`: the pool fails jobs at once for a second after a failed connection
/// attempt, then tries again; a client that honours it retries when a retry can succeed.
fn unavailable(e: &PublishError) -> Response<Body> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Error: not published: {e}"),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}
