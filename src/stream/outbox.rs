//! The per-socket outbound queue: bounded in messages and bytes, shared between the routers that
//! fill it and the one session task that drains it.
//!
//! It is a mutex-guarded `VecDeque` plus one [`AtomicWaker`]: an idle socket's queue allocates
//! nothing, a push is a short uncontended lock, and the session drains everything queued in one
//! go so that many messages become one socket write. Only one task ever waits on an outbox (its
//! session), so a single waker slot is enough and a wake-up costs no list or lock of its own.
//! When a push would exceed a limit the message is dropped, the outbox is marked overflowed and
//! the session closes the socket (a slow consumer never grows memory without bound and never
//! delays other sockets).
//!
//! What it owns: the frames queued for one socket, their count and bytes, and the flags that
//! tell its session to close (overflowed, ended, closed). What it must never do: block a
//! pusher (a push is a few field updates, never an await), grow past its limits except for a
//! replay the windows already bound, or know what a frame means (it only counts bytes and
//! carries the socket's [`Encoding`]).
//!
//! What a caller may rely on: frames come out in the order they went in; after an overflow
//! or an end nothing more is queued and the next wait returns; a push before a wait is never
//! lost (the `signalled` flag remembers it). Lock order: the outbox's own mutex is always the
//! last lock taken (the hub calls in holding its own), and the waker is woken after it is
//! released so the woken task does not contend for it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Instant;

use super::Frame;
use super::frame::Encoding;
use futures_util::task::AtomicWaker;

/// Limits of one outbox.
///
/// Both limits, because either alone is gameable: a count alone lets a few huge payloads
/// eat memory, bytes alone lets floods of tiny ones grow the `VecDeque` and the write batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most queued messages.
    pub messages: usize,
    /// Most queued bytes.
    pub bytes: usize,
}

/// What happened to a pushed message.
///
/// The hub counts `Overflow` as dropped deliveries; `Closed` is not counted (the socket is
/// gone and its session already unsubscribes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for the socket.
    Queued,
    /// Dropped: the socket is too far behind and is being closed.
    Overflow,
    /// Dropped: the socket is gone.
    Closed,
}

#[derive(Default)]
struct State {
    /// The frames themselves: reference-counted, shared with every other socket and window.
    queue: VecDeque<Frame>,
    /// The text bytes in `queue` (what the byte limit counts; not the encoded size).
    bytes: usize,
    /// When the oldest queued frame was pushed (for the delivery latency metric).
    oldest: Option<Instant>,
    /// Something was pushed (or the outbox overflowed) since the consumer last looked.
    signalled: bool,
    /// Set once a push went over a limit; sticky: the socket is closing, it never recovers.
    overflowed: bool,
    /// Set by [`Outbox::close`] or [`Outbox::end`]: every later push is refused.
    closed: bool,
    /// The server ends the client ([`Outbox::end`]): close code and reason.
    ended: Option<(u16, &'static str)>,
}

/// What [`Outbox::drain_into`] found.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    /// `false` once the outbox overflowed: the socket must be closed.
    pub healthy: bool,
    /// When the oldest drained frame was queued.
    pub oldest: Option<Instant>,
    /// The server ends the client with this close code and reason ([`Outbox::end`]).
    pub end: Option<(u16, &'static str)>,
}

/// One socket's queue of text frames to send.
///
/// Shared as `Arc<Outbox>` between the hub (its channel entries), presence and authz (which
/// push notices or end the client), and the one session that drains it.
pub struct Outbox {
    state: Mutex<State>,
    /// The session task, while it waits in [`Outbox::wait`] or [`Outbox::overflowed`].
    waker: AtomicWaker,
    /// Fixed when the socket is admitted.
    limits: Limits,
    /// What the socket's transport sends for each frame (a slot of [`Frame::encoded`]); the
    /// outbox only carries it, for whoever renders frames per socket kind.
    encoding: Encoding,
}

impl Outbox {
    /// An empty outbox of a socket that sends frames in `encoding`; allocates no queue storage
    /// until the first push.
    pub fn new(limits: Limits, encoding: Encoding) -> Self {
        Self {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            limits,
            encoding,
        }
    }

    /// The encoding the socket's transport sends.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a few field updates), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame, or refuses it when the socket is closed or over its limits.
    pub fn push(&self, msg: Frame) -> Push {
        self.push_all(std::slice::from_ref(&msg)).1
    }

    /// Queues frames in order under one lock and wakes the consumer at most once (a source's
    /// batch costs one lock and one wake per client, not one per message). Returns how many
    /// were queued and the outcome: `Queued` when all were, else why the rest were refused.
    pub fn push_all(&self, msgs: &[Frame]) -> (usize, Push) {
        let mut s = self.lock();
        // A closed or overflowed outbox refuses the whole run at once: the session is about to
        // close, and queueing more would only hold memory until then.
        if s.closed {
            return (0, Push::Closed);
        }
        if s.overflowed {
            return (0, Push::Overflow);
        }
        let was_empty = s.queue.is_empty();
        let mut queued = 0;
        for msg in msgs {
            let len = msg.len();
            // Over a limit: drop everything, not just this frame. A socket that cannot keep up is
            // closed anyway (it would otherwise see a hole in the stream with no gap to tell it),
            // so its queue is freed now rather than when its session gets round to it.
            if s.queue.len() >= self.limits.messages || s.bytes + len > self.limits.bytes {
                s.overflowed = true;
                s.signalled = true;
                s.queue.clear();
                s.queue.shrink_to_fit();
                s.bytes = 0;
                s.oldest = None;
                drop(s);
                self.waker.wake();
                return (queued, Push::Overflow);
            }
            // A clone is a reference-count increment: the text is never copied per socket.
            s.queue.push_back(msg.clone());
            s.bytes += len;
            queued += 1;
        }
        // Wake only on the empty → non-empty edge: if frames were already waiting, the session
        // has been woken and will drain these with them (one wake per burst, not per frame).
        if was_empty && queued > 0 {
            s.oldest = Some(Instant::now());
            s.signalled = true;
            drop(s);
            self.waker.wake();
        }
        (queued, Push::Queued)
    }

    /// Queues a resuming client's replay (and the `Gap` before it) regardless of the queue
    /// limits: the frames are shared with the replay window, which bounds them, and cutting a
    /// catch-up short would lose exactly what the client came back for.
    pub fn push_replay(&self, msgs: &[Frame]) {
        if msgs.is_empty() {
            return;
        }
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let was_empty = s.queue.is_empty();
        // No limit check here on purpose (see above); the bytes are still counted so that the
        // next live push sees how full the queue really is.
        for msg in msgs {
            s.bytes += msg.len();
            s.queue.push_back(msg.clone());
        }
        if was_empty {
            s.oldest = Some(Instant::now());
            s.signalled = true;
            drop(s);
            self.waker.wake();
        }
    }

    /// Bytes queued now, and whether the outbox still takes frames (not closed, not
    /// overflowed): a producer that may wait (a snapshot's pages) paces itself on it.
    pub fn backlog(&self) -> (usize, bool) {
        let s = self.lock();
        (s.bytes, !s.closed && !s.overflowed)
    }

    /// The byte limit of the queue.
    pub fn byte_limit(&self) -> usize {
        self.limits.bytes
    }

    /// Moves every queued frame into `out`.
    pub fn drain_into(&self, out: &mut Vec<Frame>) -> Drained {
        let mut s = self.lock();
        // Everything at once: the session writes the whole batch in one go, which is what makes
        // a burst cheap (one lock, one syscall-sized write, many messages).
        out.extend(s.queue.drain(..));
        s.bytes = 0;
        // A socket back to idle gives its queue storage back (after a burst, thousands of
        // sockets would otherwise each keep what the burst made them grow to).
        // 16: small enough to be cheap per idle socket, large enough that a steady trickle does
        // not reallocate on every drain.
        if s.queue.capacity() > 16 {
            s.queue = VecDeque::new();
        }
        Drained {
            healthy: !s.overflowed,
            oldest: s.oldest.take(),
            end: s.ended,
        }
    }

    /// Gives the queue's storage back when it is empty (a session after its greeting: an idle
    /// socket then holds no queue storage, as one that never received anything).
    ///
    /// Why not in `new`: the greeting is pushed before the session drains once, so the first
    /// drain may leave storage behind that an idle socket would otherwise keep for its life.
    pub fn release(&self) {
        let mut s = self.lock();
        if s.queue.is_empty() {
            s.queue = VecDeque::new();
        }
    }

    /// Waits until something was pushed (or the outbox overflowed) since the last wait.
    /// Only the socket's own session task may wait (one waker slot).
    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// [`Outbox::wait`] for transports that are polled rather than awaited (an HTTP body).
    pub fn poll_wait(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        // Register before looking, so a push between the look and the return still wakes us.
        self.waker.register(cx.waker());
        let mut s = self.lock();
        if std::mem::take(&mut s.signalled) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until the outbox overflows (used by the session task while a write is blocked on a
    /// slow peer).
    pub async fn overflowed(&self) {
        // Unlike `wait`, this does not consume `signalled`: it only watches for the overflow
        // flag, so a pending "something was pushed" is still seen by the next `wait`.
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.lock().overflowed {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Asks the transport to close the client with `code` and `reason` (access revoked): what is
    /// queued is dropped, later pushes are refused, and the session wakes. Returns `false` when
    /// the client was already ending or gone.
    pub fn end(&self, code: u16, reason: &'static str) -> bool {
        let mut s = self.lock();
        if s.closed || s.ended.is_some() {
            return false;
        }
        // `closed` too, so that pushes stop at once; the queue is dropped so that nothing the
        // client may no longer see is sent after the decision (access revoked means now).
        s.ended = Some((code, reason));
        s.closed = true;
        s.queue = VecDeque::new();
        s.bytes = 0;
        s.signalled = true;
        drop(s);
        self.waker.wake();
        true
    }

    /// Refuses further pushes and frees the queue; called when the socket ends.
    ///
    /// No wake: only the session calls this, as it ends, and nobody else waits.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.queue = VecDeque::new();
        s.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(messages: usize, bytes: usize) -> Outbox {
        Outbox::new(Limits { messages, bytes }, Encoding::slot(0))
    }

    #[test]
    fn drains_in_order() {
        let o = outbox(10, 1000);
        assert_eq!(o.push("a".into()), Push::Queued);
        assert_eq!(o.push("b".into()), Push::Queued);
        let mut out = Vec::new();
        let d = o.drain_into(&mut out);
        assert!(d.healthy && d.oldest.is_some());
        assert_eq!(out, vec![Frame::from("a"), Frame::from("b")]);
        assert!(o.drain_into(&mut out).oldest.is_none());
    }

    #[test]
    fn release_gives_back_only_an_empty_queue() {
        let o = outbox(10, 1000);
        o.push("welcome".into());
        o.release();
        assert!(o.lock().queue.capacity() > 0, "a queued frame is kept");
        let mut out = Vec::new();
        o.drain_into(&mut out);
        assert!(
            o.lock().queue.capacity() > 0,
            "draining keeps small storage"
        );
        o.release();
        assert_eq!(o.lock().queue.capacity(), 0);
        assert_eq!(out, vec![Frame::from("welcome")]);
        assert_eq!(o.push("next".into()), Push::Queued);
    }

    #[test]
    fn overflow_by_count_and_bytes() {
        let o = outbox(2, 1000);
        o.push("a".into());
        o.push("b".into());
        assert_eq!(o.push("c".into()), Push::Overflow);
        assert_eq!(o.push("d".into()), Push::Overflow);
        let mut out = Vec::new();
        assert!(!o.drain_into(&mut out).healthy);
        assert!(out.is_empty());

        let o = outbox(100, 5);
        assert_eq!(o.push("abc".into()), Push::Queued);
        assert_eq!(o.push("abc".into()), Push::Overflow);
    }

    #[test]
    fn push_all_keeps_order_and_stops_at_the_limit() {
        let o = outbox(3, 1000);
        let frames: Vec<Frame> = ["a", "b"].into_iter().map(Frame::from).collect();
        assert_eq!(o.push_all(&frames), (2, Push::Queued));
        let more: Vec<Frame> = ["c", "d", "e"].into_iter().map(Frame::from).collect();
        assert_eq!(o.push_all(&more), (1, Push::Overflow));
        let mut out = Vec::new();
        assert!(!o.drain_into(&mut out).healthy);
        assert!(out.is_empty(), "an overflowed queue is dropped at once");

        let o = outbox(10, 1000);
        o.push_all(&frames);
        o.push_all(&more);
        o.drain_into(&mut out);
        let texts: Vec<&str> = out.iter().map(Frame::as_str).collect();
        assert_eq!(texts, ["a", "b", "c", "d", "e"]);
    }

    #[tokio::test]
    async fn an_end_wakes_the_session_and_says_why() {
        let o = std::sync::Arc::new(outbox(10, 100));
        o.push("x".into());
        assert!(o.end(4403, "access revoked"));
        assert!(!o.end(4403, "again"), "once");
        tokio::time::timeout(std::time::Duration::from_secs(5), o.wait())
            .await
            .expect("woken");
        let mut out = Vec::new();
        let d = o.drain_into(&mut out);
        assert_eq!(d.end, Some((4403, "access revoked")));
        assert!(out.is_empty(), "nothing more is sent to a revoked client");
        assert_eq!(o.push("y".into()), Push::Closed);
    }

    #[test]
    fn closed_refuses() {
        let o = outbox(2, 10);
        o.close();
        assert_eq!(o.push("a".into()), Push::Closed);
    }

    #[tokio::test]
    async fn wait_wakes_after_push() {
        let o = std::sync::Arc::new(outbox(2, 10));
        let o2 = o.clone();
        let h = tokio::spawn(async move { o2.wait().await });
        o.push("x".into());
        tokio::time::timeout(std::time::Duration::from_secs(5), h)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let o = outbox(2, 10);
        o.push("x".into());
        tokio::time::timeout(std::time::Duration::from_secs(5), o.wait())
            .await
            .expect("the earlier push counts");
        // The signal was consumed: a second wait blocks until the next push.
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), o.wait()).await;
        assert!(again.is_err(), "no push since the last wait");
    }

    #[tokio::test]
    async fn overflow_wakes_the_session_in_either_wait() {
        let o = std::sync::Arc::new(outbox(1, 10));
        o.push("x".into());
        o.wait().await;
        let o2 = o.clone();
        let pusher = tokio::spawn(async move { o2.push("y".into()) });
        tokio::time::timeout(std::time::Duration::from_secs(5), o.overflowed())
            .await
            .expect("woken by the overflow");
        assert_eq!(pusher.await.unwrap(), Push::Overflow);
        tokio::time::timeout(std::time::Duration::from_secs(5), o.wait())
            .await
            .expect("the overflow also ends a wait");
    }
}
