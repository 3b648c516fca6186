//! The manager's rate limits: the per-session frame limit's defaults; the token bucket and the
//! log-line limiter themselves are `autogate_runtime::ratelimit`, shared with the core node.

pub use autogate_runtime::ratelimit::{suppressed_note, LogLimiter, TokenBucket};

/// Frames per second a gateway session may send on average, unless `manager.session_frame_rate`
/// says otherwise.
pub const FRAMES_PER_SECOND: f64 = 200.0;
/// Frames a gateway session may send in one burst, unless `manager.session_frame_burst` says
/// otherwise.
pub const FRAME_BURST: f64 = 400.0;
