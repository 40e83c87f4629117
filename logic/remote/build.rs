//! Compiles `proto/im/logic/v1/rpc.proto` with protox (no system `protoc`) and generates its
//! prost types. The client-facing messages it imports (`im.v1`) are not generated again: they
//! map to `im_protocol::pb`, so the RPC carries the client protocol's own types.

use std::path::PathBuf;

const CLIENT_PROTO: &str = "../../protocol-spec/proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed={CLIENT_PROTO}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto", CLIENT_PROTO])?;
    // The imported im.v1 files resolve the field types; their code is not generated again.
    compiler.include_imports(true);
    // The .proto comments become the doc comments of the generated items.
    compiler.include_source_info(true);
    compiler.open_files(["im/logic/v1/rpc.proto"])?;
    prost_build::Config::new()
        .out_dir(&out_dir)
        .extern_path(".im.v1", "::im_protocol::pb")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
