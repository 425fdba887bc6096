//! `Frame`: one message on its way to clients, shared by reference count with every client it
//! goes to, with one cache of its encodings.
//!
//! What it owns: the message's text, and, once the hub routed it, the channel and position it
//! has in the stream. What it must never do: know a wire format. A transport asks for the bytes
//! of an [`Encoding`] (its own: a compat websocket, a v2 websocket, an event stream) and hands
//! the encoder (`crate::wire::encode`); the first client that needs an encoding makes it, every
//! other client of that encoding shares the same bytes. So a message is encoded once per
//! encoding, never once per client, and a frame nobody reads in some encoding pays one empty
//! slot for it.
//!
//! Two kinds of frames travel the same queues:
//! - *stream messages*: routed by the hub, numbered (`seq`), stamped with their channel and the
//!   stream's epoch; their encodings differ by protocol (a v2 socket wraps the text in a
//!   `message` frame with its position, a compat socket sends the text as it is);
//! - *direct frames*: texts the server writes to one socket (answers, errors, notices), already
//!   in their protocol's words; their encodings differ only by carrier (websocket framing,
//!   `data:` lines).

use std::sync::{Arc, OnceLock};

use super::{Position, Seq};

/// Which bytes a transport sends for a frame: a slot in every frame's encoding cache. The
/// values are defined by the wire formats (`crate::wire`), not here: the stream core only keeps
/// the slots apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encoding(u8);

impl Encoding {
    /// How many encodings a frame can cache.
    pub const SLOTS: usize = 4;

    /// The encoding in cache slot `slot` (below [`Encoding::SLOTS`]; checked at compile time
    /// where it is a constant).
    pub const fn slot(slot: u8) -> Self {
        assert!((slot as usize) < Self::SLOTS, "no such encoding slot");
        Self(slot)
    }

    fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A message, cheap to clone (a reference count and the position).
#[derive(Clone)]
pub struct Frame {
    inner: Arc<Inner>,
    /// The message's stream position (`Position::seq`); zero for direct frames.
    seq: Seq,
}

/// What every clone of a frame shares.
struct Inner {
    /// The text, never changed after the frame is made.
    text: Box<str>,
    /// Where the hub routed it (stream messages only).
    route: Option<Route>,
    /// The event's name, for carriers with named events (an event stream's `event:` line);
    /// direct frames only (a `Gap`: `gap`). Carriers without names ignore it.
    name: Option<&'static str>,
    /// The encodings made so far, one slot per [`Encoding`].
    encoded: [OnceLock<Box<[u8]>>; Encoding::SLOTS],
    /// What the source attached for the hub's selectors (a table change's authorization
    /// decisions); opaque here, kept with the frame in the replay window so that a replay
    /// decides as live delivery did.
    detail: Option<Detail>,
}

/// An opaque attachment of a frame ([`Frame::with_detail`]).
pub type Detail = Arc<dyn std::any::Any + Send + Sync>;

/// A stream message's channel and the epoch of its numbering.
struct Route {
    channel: Arc<str>,
    epoch: u64,
}

impl Frame {
    /// A frame of `text`: a direct frame until the hub routes it.
    pub fn text(text: &str) -> Self {
        Self::make(text.into(), None, Seq::ZERO)
    }

    /// A direct frame that is an event named `name` where carriers name events.
    pub fn named(name: &'static str, text: String) -> Self {
        let mut frame = Self::from(text);
        if let Some(inner) = Arc::get_mut(&mut frame.inner) {
            inner.name = Some(name);
        }
        frame
    }

    fn make(text: Box<str>, route: Option<Route>, seq: Seq) -> Self {
        Self {
            inner: Arc::new(Inner {
                text,
                route,
                name: None,
                encoded: Default::default(),
                detail: None,
            }),
            seq,
        }
    }

    /// A frame of `text` carrying `detail` for the hub's selectors.
    pub fn with_detail(text: &str, detail: Detail) -> Self {
        let mut frame = Self::text(text);
        if let Some(inner) = Arc::get_mut(&mut frame.inner) {
            inner.detail = Some(detail);
        }
        frame
    }

    /// What the source attached ([`Frame::with_detail`]).
    pub fn detail(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        self.inner.detail.as_deref()
    }

    /// A frame with another text at the same place in the stream (channel, epoch, position):
    /// what one subscriber of a filtered channel receives instead of the message itself (a
    /// row change projected to its columns). Its encodings are its own.
    pub fn derived(&self, text: String) -> Self {
        let route = self.inner.route.as_ref().map(|r| Route {
            channel: r.channel.clone(),
            epoch: r.epoch,
        });
        Self::make(text.into_boxed_str(), route, self.seq)
    }

    /// The event's name, if it has one ([`Frame::named`]).
    pub fn name(&self) -> Option<&'static str> {
        self.inner.name
    }

    /// The message's position in the stream (zero: none).
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Numbers the message (the hub does, as it routes it, or a source that numbers its own
    /// messages, before any client has it). The encodings carry the position, so a frame whose
    /// allocation is already shared is detached first: clones numbered differently never share
    /// an encoding.
    pub(crate) fn set_seq(&mut self, seq: Seq) {
        if seq == self.seq {
            return;
        }
        self.seq = seq;
        self.detach();
    }

    /// Stamps a routed message with its channel and the stream's epoch (the hub, before any
    /// client has it). Same rule as [`Frame::set_seq`] for shared frames.
    pub(crate) fn set_route(&mut self, channel: &Arc<str>, epoch: u64) {
        if self
            .inner
            .route
            .as_ref()
            .is_some_and(|r| r.epoch == epoch && Arc::ptr_eq(&r.channel, channel))
        {
            return;
        }
        let route = Route {
            channel: channel.clone(),
            epoch,
        };
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.route = Some(route);
                inner.encoded = Default::default();
            }
            None => {
                let (name, detail) = (self.inner.name, self.inner.detail.clone());
                *self = Self::make(self.inner.text.clone(), Some(route), self.seq);
                if let Some(inner) = Arc::get_mut(&mut self.inner) {
                    inner.name = name;
                    inner.detail = detail;
                }
            }
        }
    }

    /// Forgets the encodings (they depend on the position); copies a shared frame first.
    fn detach(&mut self) {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.encoded = Default::default(),
            None => {
                let route = self.inner.route.as_ref().map(|r| Route {
                    channel: r.channel.clone(),
                    epoch: r.epoch,
                });
                let (name, detail) = (self.inner.name, self.inner.detail.clone());
                *self = Self::make(self.inner.text.clone(), route, self.seq);
                if let Some(inner) = Arc::get_mut(&mut self.inner) {
                    inner.name = name;
                    inner.detail = detail;
                }
            }
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.inner.text
    }

    /// Length of the text in bytes (what queue limits count).
    pub fn len(&self) -> usize {
        self.inner.text.len()
    }

    /// The channel the hub routed the message to (`None`: a direct frame).
    pub fn channel(&self) -> Option<&str> {
        self.inner.route.as_ref().map(|r| &*r.channel)
    }

    /// The message's position (`None`: a direct frame, or not numbered).
    pub fn position(&self) -> Option<Position> {
        let route = self.inner.route.as_ref()?;
        (!self.seq.is_zero()).then_some(Position {
            epoch: route.epoch,
            seq: self.seq,
        })
    }

    /// The frame's bytes in `encoding`, made by `encode` the first time any client asks and
    /// shared by every later one. `encode` must depend on the frame and the encoding only
    /// (never on the client asking).
    #[inline]
    pub fn encoded(&self, encoding: Encoding, encode: fn(Encoding, &Frame) -> Vec<u8>) -> &[u8] {
        match self.inner.encoded[encoding.index()].get() {
            Some(bytes) => bytes,
            None => self.encode_slow(encoding, encode),
        }
    }

    #[cold]
    #[inline(never)]
    fn encode_slow(&self, encoding: Encoding, encode: fn(Encoding, &Frame) -> Vec<u8>) -> &[u8] {
        self.inner.encoded[encoding.index()].get_or_init(|| encode(encoding, self).into())
    }

    /// Whether two frames share one allocation (tests of "encoded once").
    #[cfg(test)]
    pub fn shares_with(&self, other: &Frame) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
            && (Arc::ptr_eq(&self.inner, &other.inner) || self.inner.text == other.inner.text)
    }
}

impl Eq for Frame {}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("text", &self.as_str())
            .field("channel", &self.channel())
            .field("seq", &self.seq)
            .finish()
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self::make(text.into_boxed_str(), None, Seq::ZERO)
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Self::text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Encoding = Encoding::slot(0);
    const B: Encoding = Encoding::slot(1);

    fn tagged(e: Encoding, f: &Frame) -> Vec<u8> {
        format!("{}:{}:{}", e.0, f.seq().minor, f.as_str()).into_bytes()
    }

    /// The encodings are made once for all clones, kept apart per encoding, and never shared
    /// across positions.
    #[test]
    fn encodings_are_made_once_and_follow_the_position() {
        let mut frame = Frame::text("hello");
        frame.set_seq(Seq::counter(7));
        let clone = frame.clone();
        assert_eq!(frame.encoded(A, tagged), b"0:7:hello");
        assert_eq!(frame.encoded(B, tagged), b"1:7:hello");
        assert!(std::ptr::eq(
            frame.encoded(A, |_, _| unreachable!()),
            clone.encoded(A, |_, _| unreachable!())
        ));

        // Renumbering a shared frame detaches it: the clone keeps its encoding, the renumbered
        // frame gets its own.
        let mut renumbered = clone.clone();
        renumbered.set_seq(Seq::counter(8));
        assert_eq!(renumbered.as_str(), "hello");
        assert_eq!(renumbered.encoded(A, tagged), b"0:8:hello");
        assert_eq!(clone.encoded(A, |_, _| unreachable!()), b"0:7:hello");
    }

    /// A routed frame knows its channel and position; a direct one has neither.
    #[test]
    fn routes_give_positions() {
        let direct = Frame::text("x");
        assert_eq!((direct.channel(), direct.position()), (None, None));
        let mut routed = Frame::text("x");
        routed.set_seq(Seq::counter(3));
        let shared = routed.clone();
        routed.set_route(&Arc::from("chat"), 42);
        assert_eq!(routed.channel(), Some("chat"));
        assert_eq!(
            routed.position(),
            Some(Position {
                epoch: 42,
                seq: Seq::counter(3)
            })
        );
        // The clone made before the route is untouched.
        assert_eq!(shared.channel(), None);
    }
}
