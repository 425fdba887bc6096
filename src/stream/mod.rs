//! The stream layer between sources and clients: [`hub`] maps channel names to the clients that
//! follow them, [`outbox`] is each client's bounded queue, and [`Frame`] is the unit they carry.
//!
//! Nothing here knows PostgreSQL or a wire protocol: a source hands the hub `(channel, frame)`
//! pairs, a transport drains an outbox and asks each frame for its bytes in the transport's
//! [`Encoding`] (made once per encoding by `crate::wire` and shared through the frame). Keep it
//! that way: where the hub must tell a client something (a resume that is not exact, an
//! outage), it hands the facts ([`ResumeGap`], [`GapReason`]) to a function of the caller's,
//! which words them in the client's protocol.
//!
//! The replay window (positions, resume) lives here too, beside the hub, so that every source
//! and every transport gets it without knowing about the other: [`position`] numbers messages,
//! [`window`] keeps each channel's recent ones, and the hub replays them to resuming clients.

pub mod frame;
pub mod gap;
pub mod hub;
pub mod outbox;
pub mod position;
pub mod select;
pub mod window;

pub use frame::{Encoding, Frame};
pub use gap::GapReason;
pub use hub::{Hub, HubStats, ReplaySettings, ResumeGap, Resumed};
pub use outbox::{Limits, Outbox};
pub use position::{Position, ResumeFrom, Seq};
pub use select::{Kept, Selector, View};
