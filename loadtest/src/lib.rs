//! The load tester: not written yet (see the load-test issue).
