//! uniffi bindings over sdk-core: not written yet.
