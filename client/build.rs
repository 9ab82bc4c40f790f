//! Compiles `../proto` with protox (pure Rust: no system protoc). Client
//! stubs always; server stubs and the encoded descriptor set (for gRPC
//! server reflection) only with the `server` feature, which the daemon
//! enables: one copy of the message types serves both sides.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let server = std::env::var_os("CARGO_FEATURE_SERVER").is_some();
    let fds = protox::compile(["kmsd/v1/kmsd.proto"], [&root])?;
    if server {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("kmsd_descriptor.bin"), fds.encode_to_vec())?;
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(server)
        .compile_fds(fds)?;
    Ok(())
}
