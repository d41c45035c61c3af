//! Why a connection ends, how it is told to the client (a WebSocket close
//! code) and how it is counted (a bounded metrics label).

/// Why the node closes a socket; each maps to a WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or the socket ended.
    Normal,
    /// 4001: authentication failed, missing or too slow.
    AuthFailed,
    /// 4003: the token expired without renewal.
    TokenExpired,
    /// 4008: policy (too many connections for one user).
    Policy,
    /// 4009: the outbound queue overflowed.
    SlowConsumer,
    /// 1002: a frame that breaks RFC 6455.
    ProtocolError,
    /// 1007: a text frame that is not UTF-8.
    NotUtf8,
    /// 1009: a frame larger than `max_frame_bytes`.
    TooBig,
    /// 1012: the node is restarting (drain).
    Restart,
    /// 1001: nothing, not even a pong, arrived for `idle_timeout_secs`.
    DeadPeer,
    /// The client closed with this (valid) code, which is echoed back.
    Echo(u16),
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::AuthFailed => 4001,
            CloseReason::TokenExpired => 4003,
            CloseReason::Policy => 4008,
            CloseReason::SlowConsumer => 4009,
            CloseReason::ProtocolError => 1002,
            CloseReason::NotUtf8 => 1007,
            CloseReason::TooBig => 1009,
            CloseReason::Restart => 1012,
            CloseReason::DeadPeer => 1001,
            CloseReason::Echo(code) => code,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::AuthFailed => "authentication failed",
            CloseReason::TokenExpired => "token expired",
            CloseReason::Policy => "policy violation",
            CloseReason::SlowConsumer => "too slow a consumer",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::NotUtf8 => "text frame not UTF-8",
            CloseReason::TooBig => "frame too large",
            CloseReason::Restart => "node restarting",
            CloseReason::DeadPeer => "no sign of life",
            CloseReason::Echo(_) => "",
        }
    }

    /// What answers a client's close frame: its own code echoed, or 1000
    /// when it gave none (RFC 6455, 5.5.1).
    pub fn echoing(code: Option<u16>) -> Self {
        code.map_or(CloseReason::Normal, CloseReason::Echo)
    }

    /// The metrics label: the code, except the clients' own codes, which are
    /// counted together (a label per client-chosen code would be unbounded).
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "1000",
            CloseReason::AuthFailed => "4001",
            CloseReason::TokenExpired => "4003",
            CloseReason::Policy => "4008",
            CloseReason::SlowConsumer => "4009",
            CloseReason::ProtocolError => "1002",
            CloseReason::NotUtf8 => "1007",
            CloseReason::TooBig => "1009",
            CloseReason::Restart => "1012",
            CloseReason::DeadPeer => "1001",
            CloseReason::Echo(_) => "client",
        }
    }
}
