//! The stateless business tier: arrives with the server-core issue.
