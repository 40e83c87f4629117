//! Conformance suite: written by the embedded-store work.
