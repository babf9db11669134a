//! The HTTP policy proxy that agents' redirected TCP egress goes through.
pub mod tls;
