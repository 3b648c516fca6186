//! TLS in one place: certificate minting, rustls configurations and certificate pinning.
#![forbid(unsafe_code)]
