//! `ping`: answered `pong` at once (a client's own keep-alive, or a round-trip probe).

use crate::stream::Frame;
use crate::wire::v2::{self as wire, Id};

/// The answer to `ping`.
pub(super) fn answer(id: &Id) -> Frame {
    wire::pong(id)
}
