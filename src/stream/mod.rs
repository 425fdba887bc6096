//! The stream layer between sources and clients: [`hub`] maps channel names to the clients that
//! follow them, [`outbox`] is each client's bounded queue, and [`Frame`] is the unit they carry.
//!
//! Nothing here knows PostgreSQL or a wire protocol: a source hands the hub `(channel, frame)`
//! pairs, a transport drains an outbox and writes frames in its own encoding. Keep it that way:
//! the replay window (positions, resume) lives here too, beside the hub, so that every source
//! and every transport gets it without knowing about the other: [`position`] numbers messages,
//! [`window`] keeps each channel's recent ones, and the hub replays them to resuming clients.

pub mod frame;
pub mod hub;
pub mod outbox;
pub mod position;
pub mod window;

pub use frame::Frame;
pub use hub::{Hub, HubStats, ReplaySettings};
pub use outbox::{Limits, Outbox};
pub use position::{Position, ResumeFrom, Seq};
