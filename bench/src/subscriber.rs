//! Receiving side of a socket: reads frames in batches, answers pings,
//! recognises warm-up probes, error frames and data messages (fanout
//! notifications or ingest envelopes), and tracks sequence numbers and
//! latency per sender. Protocol v2 sockets are read the same way: a v2 `message`
//! carries the compat text, which is classified as above; `error`/`nack` count
//! as error frames, `gap` as gaps, `subscribed` in [`Shared::subscribed`].

use crate::latency::Latency;
use crate::message::{IngestMsg, now_ns};
use crate::tracker::SeqTracker;
use crate::v2;
use crate::wsclient::{Msg, WsReader, WsWriter};
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

/// State shared by all receiving sockets of a run.
#[derive(Debug, Default)]
pub struct Shared {
    /// Latency from the sender's timestamp to receipt (the generator parsed the frame).
    pub latency: Latency,
    /// Latency from the sender's timestamp to the client kernel's receipt (sockets with
    /// receive timestamps on): excludes the generator's own backlog.
    pub kernel_latency: Latency,
    /// Data messages received (all, including duplicates).
    pub frames: AtomicU64,
    /// Sockets that saw at least one warm-up probe.
    pub ready: AtomicUsize,
    /// Protocol v2 `subscribed` answers received (all sockets).
    pub subscribed: AtomicUsize,
    /// Wall-clock ns of the latest receipt.
    pub last_rx_ns: AtomicU64,
    /// Number of senders (publishers or writers); sender ids are below it.
    pub senders: usize,
    /// Sequence numbers at or above this are invalid.
    pub seq_limit: u64,
}

impl Shared {
    /// Shared state for `senders` senders and sequence numbers below `seq_limit`.
    pub fn new(senders: usize, seq_limit: u64) -> Self {
        Self {
            senders,
            seq_limit,
            ..Self::default()
        }
    }
}

/// Where pongs go.
#[derive(Debug)]
pub enum Pong {
    /// This task owns the write half.
    Direct(WsWriter<OwnedWriteHalf>),
    /// Another task owns the write half.
    Forward(mpsc::Sender<Vec<u8>>),
}

/// What one socket saw.
#[derive(Debug, Default)]
pub struct SubResult {
    /// Trackers per sender id.
    pub trackers: Vec<SeqTracker>,
    /// Data messages.
    pub frames: u64,
    /// Warm-up probes.
    pub probes: u64,
    /// Messages for another channel than the socket's.
    pub misrouted: u64,
    /// Messages that could not be parsed.
    pub unparsed: u64,
    /// `{"event":"Error"}` frames.
    pub error_frames: u64,
    /// Text of the first error frame.
    pub first_error: Option<String>,
    /// Why the socket ended before it was told to stop.
    pub ended: Option<String>,
    /// `Gap` events (only event streams count them).
    pub gaps: u64,
}

#[derive(Debug, Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    seq: Option<u64>,
    #[serde(rename = "pub")]
    publisher: Option<u32>,
    t: Option<u64>,
    probe: Option<u64>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
}

/// What a received text is.
pub enum Kind {
    /// A numbered message from a sender.
    Data {
        /// Sender id.
        sender: u32,
        /// Sequence number per sender (and channel).
        seq: u64,
        /// Send time, ns since the epoch.
        t: u64,
    },
    /// A warm-up probe.
    Probe,
    /// An `Error` event (compat), or a v2 `error` or `nack`.
    Error,
    /// A v2 `gap` event.
    Gap,
    /// A v2 `subscribed` answer.
    Subscribed,
    /// Another v2 frame (`welcome`, other answers).
    Control,
    /// Anything else.
    Unparsed,
}

/// Parses a leading unsigned decimal number; returns it and the rest.
fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = b[..n]
        .iter()
        .fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0'));
    Some((v, &b[n..]))
}

/// Fast path for the exact text the fanout publishers produce (servers
/// deliver it byte for byte): `{"channel":"..","seq":N,"pub":P,"t":T...`.
fn fast_fanout(text: &[u8], own_channel: &str) -> Option<(Kind, bool)> {
    let rest = text.strip_prefix(b"{\"channel\":\"")?;
    let q = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
    let misrouted = &rest[..q] != own_channel.as_bytes();
    let rest = rest[q..].strip_prefix(b"\",\"seq\":")?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"pub\":")?;
    let (sender, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t, rest) = number(rest)?;
    if !matches!(rest.first(), Some(b',' | b'}')) {
        return None;
    }
    let sender = u32::try_from(sender).ok()?;
    Some((Kind::Data { sender, seq, t }, misrouted))
}

/// Classifies a received text; the flag says it names another channel than `own_channel`.
pub fn classify(text: &[u8], own_channel: &str) -> (Kind, bool) {
    if let Some(r) = fast_fanout(text, own_channel) {
        return r;
    }
    if v2::is_v2(text) {
        return classify_v2(text, own_channel);
    }
    let Ok(m) = serde_json::from_slice::<Incoming<'_>>(text) else {
        return (Kind::Unparsed, false);
    };
    let misrouted = m.channel.as_deref().is_some_and(|c| c != own_channel);
    let kind = if m.event.as_deref() == Some("Error") {
        Kind::Error
    } else if m.probe.is_some() {
        Kind::Probe
    } else if let Some(p) = m.payload.as_deref() {
        match serde_json::from_str::<IngestMsg>(p) {
            Ok(IngestMsg {
                w: Some(sender),
                seq: Some(seq),
                t: Some(t),
            }) => Kind::Data { sender, seq, t },
            _ => Kind::Unparsed,
        }
    } else if let (Some(sender), Some(seq), Some(t)) = (m.publisher, m.seq, m.t) {
        Kind::Data { sender, seq, t }
    } else {
        Kind::Unparsed
    };
    (kind, misrouted)
}

/// [`classify`] for a protocol v2 frame: a `message` is its compat text.
fn classify_v2(text: &[u8], own_channel: &str) -> (Kind, bool) {
    let Some(r) = v2::read(text) else {
        return (Kind::Unparsed, false);
    };
    let kind = match r.kind {
        v2::Kind::Message => match &r.data {
            Some(data) if !v2::is_v2(data) => return classify(data, own_channel),
            _ => Kind::Unparsed,
        },
        v2::Kind::Error | v2::Kind::Nack => Kind::Error,
        v2::Kind::Gap => Kind::Gap,
        v2::Kind::Subscribed => Kind::Subscribed,
        _ => Kind::Control,
    };
    (kind, false)
}

/// Runs one receiving socket until `stop` changes or the socket ends.
pub async fn run(
    id: usize,
    channel: String,
    mut rd: WsReader<OwnedReadHalf>,
    mut pong: Pong,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut res = SubResult {
        trackers: vec![SeqTracker::default(); shared.senders],
        ..SubResult::default()
    };
    let mut ready = false;
    let mut samples: Vec<u64> = Vec::new();
    let mut kernel_samples: Vec<u64> = Vec::new();
    // Made once: re-made on every read it would join and leave the watch channel's waiter list,
    // which all sockets share, once per frame (measurable at 50,000 frames/s).
    let stopped = stop.changed();
    tokio::pin!(stopped);
    // Requests queued before the task started (v2 subscriptions) go out first.
    if let Pong::Direct(w) = &mut pong
        && w.pending() > 0
        && w.flush().await.is_err()
    {
        res.ended = Some("request write failed".into());
        return res;
    }
    'outer: loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = rd.fill_stamped() => match r {
                Ok(0) => { res.ended = Some("eof".into()); break }
                Err(e) => { res.ended = Some(format!("io: {:?}", e.kind())); break }
                Ok(_) => {}
            },
        }
        let now = now_ns();
        let rx = rd.rx_ns();
        let mut data = 0u64;
        loop {
            let m = match rd.next_msg() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    res.ended = Some(format!("protocol: {e}"));
                    break 'outer;
                }
            };
            match m {
                Msg::Text(t) | Msg::Binary(t) => {
                    let (kind, misrouted) = classify(t, &channel);
                    res.misrouted += u64::from(misrouted);
                    match kind {
                        Kind::Data { sender, seq, t } => {
                            data += 1;
                            if let Some(tr) = res.trackers.get_mut(sender as usize) {
                                tr.record(seq, shared.seq_limit);
                            } else {
                                res.unparsed += 1;
                            }
                            samples.push(now.saturating_sub(t));
                            if rx > 0 {
                                kernel_samples.push(rx.saturating_sub(t));
                            }
                        }
                        Kind::Probe => {
                            res.probes += 1;
                            if !ready {
                                ready = true;
                                shared.ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Kind::Error => {
                            res.error_frames += 1;
                            if res.first_error.is_none() {
                                res.first_error = Some(String::from_utf8_lossy(t).into_owned());
                            }
                        }
                        Kind::Gap => res.gaps += 1,
                        Kind::Subscribed => {
                            shared.subscribed.fetch_add(1, Ordering::Relaxed);
                        }
                        Kind::Control => {}
                        Kind::Unparsed => res.unparsed += 1,
                    }
                }
                Msg::Ping(p) => match &mut pong {
                    Pong::Direct(w) => w.push_pong(p),
                    Pong::Forward(tx) => {
                        let _ = tx.try_send(p.to_vec());
                    }
                },
                Msg::Pong => {}
                Msg::Close(code) => {
                    res.ended = Some(format!("close {}", code.unwrap_or(0)));
                    break 'outer;
                }
            }
        }
        if let Pong::Direct(w) = &mut pong
            && w.pending() > 0
            && tokio::time::timeout(Duration::from_secs(5), w.flush())
                .await
                .map_or(true, |r| r.is_err())
        {
            res.ended = Some("pong write failed".into());
            break;
        }
        if data > 0 {
            res.frames += data;
            shared.latency.record_all(id, &samples);
            samples.clear();
            shared.kernel_latency.record_all(id, &kernel_samples);
            kernel_samples.clear();
            shared.frames.fetch_add(data, Ordering::Relaxed);
            shared.last_rx_ns.fetch_max(now, Ordering::Relaxed);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message;

    #[test]
    fn classifies_messages() {
        let f = message::fanout("c1", 5, 2, 77, 100);
        assert!(matches!(
            classify(f.as_bytes(), "c1"),
            (
                Kind::Data {
                    sender: 2,
                    seq: 5,
                    t: 77
                },
                false
            )
        ));
        assert!(matches!(
            classify(f.as_bytes(), "c2"),
            (Kind::Data { .. }, true)
        ));
        let p = message::probe("c1", 1);
        assert!(matches!(classify(p.as_bytes(), "c1"), (Kind::Probe, false)));
        let env = serde_json::json!({
            "channel": "c1", "event": "WebsocketMessage",
            "payload": message::ingest(4, 9, 11, 60), "claims": {"mode": "rw"}
        })
        .to_string();
        assert!(matches!(
            classify(env.as_bytes(), "c1"),
            (
                Kind::Data {
                    sender: 4,
                    seq: 9,
                    t: 11
                },
                false
            )
        ));
        // slow path agrees with the fast path on re-ordered fields
        let re = br#"{"seq":5,"channel":"c1","t":77,"pub":2}"#;
        assert!(fast_fanout(re, "c1").is_none());
        assert!(matches!(
            classify(re, "c1"),
            (
                Kind::Data {
                    sender: 2,
                    seq: 5,
                    t: 77
                },
                false
            )
        ));
        let tiny = message::fanout("c1", 5, 2, 77, 0);
        assert!(fast_fanout(tiny.as_bytes(), "c1").is_some());
        assert!(fast_fanout(br#"{"channel":"c1","seq":5,"pub":2,"t":77x"#, "c1").is_none());
        let err = br#"{"event":"Error","code":413,"message":"too big"}"#;
        assert!(matches!(classify(err, "c1"), (Kind::Error, false)));
        assert!(matches!(classify(b"hello", "c1"), (Kind::Unparsed, false)));
        // protocol v2: the compat text inside a message, answers and events
        // (as the server writes it: `type` first)
        let v2_message = |data: &str| {
            format!(
                r#"{{"type":"message","channel":"c1","position":"e-5","data":{}}}"#,
                serde_json::Value::from(data)
            )
        };
        let m = v2_message(&f);
        assert!(matches!(
            classify(m.as_bytes(), "c1"),
            (
                Kind::Data {
                    sender: 2,
                    seq: 5,
                    t: 77
                },
                false
            )
        ));
        let m = v2_message(&p);
        assert!(matches!(classify(m.as_bytes(), "c1"), (Kind::Probe, false)));
        for (frame, kind) in [
            (
                r#"{"type":"subscribed","id":1,"channel":"c1","position":"e-1","replayed":0}"#,
                "s",
            ),
            (
                r#"{"type":"nack","id":1,"channel":"c1","code":"read_only","message":"m"}"#,
                "e",
            ),
            (
                r#"{"type":"error","id":null,"code":"bad_json","message":"m"}"#,
                "e",
            ),
            (
                r#"{"type":"gap","channel":"c1","reason":"source_outage","down_ms":3}"#,
                "g",
            ),
            (r#"{"type":"welcome","protocol":"pgws.v2"}"#, "c"),
        ] {
            let got = match classify(frame.as_bytes(), "c1").0 {
                Kind::Subscribed => "s",
                Kind::Error => "e",
                Kind::Gap => "g",
                Kind::Control => "c",
                _ => "?",
            };
            assert_eq!(got, kind, "{frame}");
        }
    }
}
