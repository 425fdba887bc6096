//! Receiving side of an event stream: the SSE counterpart of [`crate::subscriber`]. Reads
//! events in batches, recognises warm-up probes, `Error` and `Gap` events, the named `close`
//! event and numbered data messages (the exact notification texts, which pgws sends as `data:`),
//! tracks sequence numbers and latency per sender, and remembers the last `id:` for resuming.

use crate::message::now_ns;
use crate::sseclient::{SseMsg, SseReader};
use crate::subscriber::{Kind, Shared, SubResult, classify};
use crate::tracker::SeqTracker;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::AsyncRead;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

/// A numbered message just received.
#[derive(Debug, Clone, Copy)]
pub struct Data {
    /// Sequence number.
    pub seq: u64,
    /// Send time (ns since the epoch).
    pub t: u64,
}

/// What one stream has seen so far (it survives reconnects).
#[derive(Debug)]
pub struct Receiver {
    /// Counters and trackers, as for a websocket.
    pub res: SubResult,
    /// The last `id:` received (what `Last-Event-ID` carries on a reconnect).
    pub last_id: Vec<u8>,
    /// Warm-up probes were seen.
    pub ready: bool,
    channel: String,
    samples: Vec<u64>,
    batch: u64,
}

impl Receiver {
    /// A receiver for `channel` with `senders` trackers.
    pub fn new(channel: String, senders: usize) -> Self {
        Self {
            res: SubResult {
                trackers: vec![SeqTracker::default(); senders],
                ..SubResult::default()
            },
            last_id: Vec::new(),
            ready: false,
            channel,
            samples: Vec::new(),
            batch: 0,
        }
    }

    /// Handles one message received at `now`; returns it when it is a numbered message. A
    /// `close` event sets `res.ended`.
    pub fn on_msg(&mut self, m: &SseMsg<'_>, shared: &Shared, now: u64) -> Option<Data> {
        let SseMsg::Event { id, event, data } = m else {
            return None;
        };
        if let Some(id) = id {
            self.last_id.clear();
            self.last_id.extend_from_slice(id);
        }
        if let Some(name) = event
            && *name != b"message"
        {
            if *name == b"close" {
                self.res.ended = Some(format!("close {}", String::from_utf8_lossy(data)));
            }
            return None;
        }
        let (kind, misrouted) = classify(data, &self.channel);
        self.res.misrouted += u64::from(misrouted);
        match kind {
            Kind::Data { sender, seq, t } => {
                self.batch += 1;
                if let Some(tr) = self.res.trackers.get_mut(sender as usize) {
                    tr.record(seq, shared.seq_limit);
                } else {
                    self.res.unparsed += 1;
                }
                self.samples.push(now.saturating_sub(t));
                return Some(Data { seq, t });
            }
            Kind::Probe => {
                self.res.probes += 1;
                if !self.ready {
                    self.ready = true;
                    shared.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
            Kind::Error => {
                self.res.error_frames += 1;
                if self.res.first_error.is_none() {
                    self.res.first_error = Some(String::from_utf8_lossy(data).into_owned());
                }
            }
            Kind::Unparsed if is_gap(data) => self.res.gaps += 1,
            Kind::Unparsed | Kind::Subscribed | Kind::Control => self.res.unparsed += 1,
            Kind::Gap => self.res.gaps += 1,
        }
        None
    }

    /// Publishes what the last batch of reads gave to the shared counters.
    pub fn flush(&mut self, key: usize, shared: &Shared, now: u64) {
        if self.batch > 0 {
            self.res.frames += self.batch;
            shared.latency.record_all(key, &self.samples);
            self.samples.clear();
            shared.frames.fetch_add(self.batch, Ordering::Relaxed);
            shared.last_rx_ns.fetch_max(now, Ordering::Relaxed);
            self.batch = 0;
        }
    }
}

/// Whether a text is a pgws `Gap` event.
fn is_gap(data: &[u8]) -> bool {
    data.starts_with(b"{")
        && data
            .windows(b"\"event\":\"Gap\"".len())
            .any(|w| w == b"\"event\":\"Gap\"")
}

/// Reads whatever the next read brings and handles every complete message in it; each numbered
/// message also goes to `on_data(message, its id, receipt time)`. Returns `Err(why)` when the
/// stream ended.
pub async fn read_batch<R: AsyncRead + Unpin>(
    rd: &mut SseReader<R>,
    rx: &mut Receiver,
    key: usize,
    shared: &Shared,
    mut on_data: impl FnMut(&Data, &[u8], u64),
) -> Result<(), String> {
    match rd.fill().await {
        Ok(0) => return Err("eof".into()),
        Err(e) => return Err(format!("io: {:?}", e.kind())),
        Ok(_) => {}
    }
    let now = now_ns();
    loop {
        match rd.next_msg() {
            Ok(Some(m)) => {
                if let Some(d) = rx.on_msg(&m, shared, now) {
                    on_data(&d, &rx.last_id, now);
                }
            }
            Ok(None) => break,
            Err(e) => {
                rx.flush(key, shared, now);
                return Err(format!("protocol: {e}"));
            }
        }
    }
    rx.flush(key, shared, now);
    if let Some(e) = &rx.res.ended {
        return Err(e.clone());
    }
    if rd.ended() {
        return Err("stream ended".into());
    }
    Ok(())
}

/// Runs one event stream until `stop` changes or the stream ends (the fan-out and idle
/// scenarios' counterpart of [`crate::subscriber::run`]).
pub async fn run(
    id: usize,
    channel: String,
    mut rd: SseReader<OwnedReadHalf>,
    _wr: OwnedWriteHalf,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut rx = Receiver::new(channel, shared.senders);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = read_batch(&mut rd, &mut rx, id, &shared, |_, _, _| {}) => if let Err(e) = r {
                rx.res.ended = Some(e);
                break;
            },
        }
    }
    rx.res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message;

    #[test]
    fn receiver_classifies_events() {
        let shared = Shared::new(1, 100);
        let mut rx = Receiver::new("c1".into(), 1);
        let f = message::fanout("c1", 3, 0, 77, 100);
        let m = SseMsg::Event {
            id: Some(b"e-9"),
            event: None,
            data: f.as_bytes(),
        };
        let d = rx.on_msg(&m, &shared, 100).unwrap();
        assert_eq!((d.seq, d.t), (3, 77));
        assert_eq!(rx.last_id, b"e-9");
        let p = message::probe("c1", 1);
        let probe = SseMsg::Event {
            id: None,
            event: None,
            data: p.as_bytes(),
        };
        assert!(rx.on_msg(&probe, &shared, 100).is_none());
        assert!(rx.ready);
        let gap = SseMsg::Event {
            id: None,
            event: None,
            data: br#"{"event":"Gap","reason":"window_exceeded"}"#,
        };
        rx.on_msg(&gap, &shared, 100);
        let close = SseMsg::Event {
            id: None,
            event: Some(b"close"),
            data: br#"{"event":"Close","code":4002}"#,
        };
        rx.on_msg(&close, &shared, 100);
        rx.flush(0, &shared, 100);
        assert_eq!((rx.res.frames, rx.res.gaps, rx.res.unparsed), (1, 1, 0));
        assert!(rx.res.ended.as_deref().unwrap().contains("4002"));
        assert_eq!(shared.frames.load(Ordering::Relaxed), 1);
        assert_eq!(rx.last_id, b"e-9", "events without id keep the last one");
    }
}
