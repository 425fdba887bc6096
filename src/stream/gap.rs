//! Why a resume cannot be exact: the reasons the hub finds when it plans a replay, each with the
//! sentence a client is shown. Every wire format names the same reasons (`reason` in a compat
//! `Gap` event, a v2 `gap` frame, an SSE `gap` event), so they live here, with the hub that
//! decides them, and not in any one format.

/// Why a resume could not be exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Messages after the position left the window (count, bytes or age limits).
    WindowExceeded,
    /// The position is not one (malformed, too long).
    UnknownPosition,
    /// The position is from another server process (another node, or before a restart).
    OtherEpoch,
    /// The position is ahead of this server's stream.
    FuturePosition,
    /// The source lost messages after the position (the LISTEN connection was down).
    SourceOutage,
}

impl GapReason {
    /// The `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WindowExceeded => "window_exceeded",
            Self::UnknownPosition => "unknown_position",
            Self::OtherEpoch => "other_epoch",
            Self::FuturePosition => "future_position",
            Self::SourceOutage => "source_outage",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::WindowExceeded => {
                "messages after your position are no longer kept; what follows is what the server still has"
            }
            Self::UnknownPosition => {
                "that is not a position of this server; what follows is everything the server still has"
            }
            Self::OtherEpoch => {
                "that position is from another server process (another node, or before a restart); what follows is everything this one still has"
            }
            Self::FuturePosition => {
                "that position is ahead of this server's stream; what follows is everything the server still has"
            }
            Self::SourceOutage => {
                "the server's database connection was lost after your position; messages sent meanwhile may be lost; what follows is what the server has"
            }
        }
    }
}
