//! uniffi's `uniffi-bindgen` command, built from the same uniffi version as `sdk-bindings`
//! (generated sources and the native library must come from one version).

fn main() {
    uniffi::uniffi_bindgen_main()
}
