//! The shared client core: not written yet (see the client-core issue).
