//! Subscribers that see a channel through a view: a table's row subscriptions, each with its
//! own filter and column list, on the table's channel.
//!
//! What it owns: the two traits the hub calls for such subscribers, and the [`View`] a caller
//! hands to [`Hub::subscribe_with`](super::Hub::subscribe_with). What it must never do: know
//! what a view means (rows, filters, JSON): that is the implementor's (`rows::selector`), so the
//! stream core stays free of features.
//!
//! Why a per-channel [`Selector`] rather than one predicate per subscriber: a table can have
//! thousands of filtered subscribers, and an index over their filters picks the few a change can
//! concern without asking every one of them (docs/ROWS.md, "The equality index").

use std::any::Any;
use std::sync::Arc;

use super::frame::Frame;
use super::outbox::Outbox;

/// The filtered subscribers of one channel, kept by the hub in the channel's entry.
///
/// Called under the hub's locks (read lock to route, write lock to add and remove): every
/// method must be quick and must not call back into the hub.
pub trait Selector: Send + Sync {
    /// Adds `outbox` with its subscription (made by the same implementor, see [`View`]).
    /// `false` if `sub` is not of the implementor's kind (nothing added).
    fn add(&mut self, outbox: &Arc<Outbox>, sub: Box<dyn Any + Send + Sync>) -> bool;
    /// Removes `outbox`; `false` when it was not there.
    fn remove(&mut self, outbox: &Arc<Outbox>) -> bool;
    /// Whether no subscriber is left.
    fn is_empty(&self) -> bool;
    /// Calls `each` once per subscriber (for server-wide notices such as an outage).
    fn for_each(&self, each: &mut dyn FnMut(&Arc<Outbox>));
    /// Calls `deliver` with each subscriber that receives `frame` and what it receives (the
    /// frame itself or a frame derived from it, [`Frame::derived`]). Returns how many
    /// subscribers were asked (for the metrics: asked but not delivered = filtered out).
    fn route(&self, frame: &Frame, deliver: &mut dyn FnMut(&Arc<Outbox>, Frame)) -> usize;
    /// What `outbox` receives of `frame` (replay after a resume): the same answer as
    /// [`Selector::route`] gives it live.
    fn view(&self, outbox: &Arc<Outbox>, frame: &Frame) -> Option<Frame>;
    /// Ends the holding of `outbox`'s subscription (one that keeps what it receives aside while
    /// its snapshot is read) and gives what it held; from now on it receives live. `None`: no
    /// such subscription, or it was not holding.
    fn release(&mut self, outbox: &Arc<Outbox>) -> Option<Kept>;
}

/// What a holding subscription kept aside ([`Selector::release`]).
#[derive(Debug)]
pub enum Kept {
    /// What it received, in stream order.
    Frames(Vec<Frame>),
    /// It received more than it may hold: what it held was dropped.
    Overflowed,
}

/// A subscription that sees its channel through a view: the subscription itself (opaque to the
/// hub) and how to make the channel's [`Selector`] if it has none yet.
pub struct View {
    /// Handed to [`Selector::add`].
    pub subscription: Box<dyn Any + Send + Sync>,
    /// Makes an empty selector of the kind that understands `subscription`.
    pub selector: fn() -> Box<dyn Selector>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("View")
    }
}
