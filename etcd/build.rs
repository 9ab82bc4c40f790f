//! Compiles the vendored etcd v3 API (`proto/`, see its README) with
//! protox: pure Rust, no system `protoc`. Client stubs only: kmsd never
//! serves the etcd API.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(
        [
            "rpc.proto",
            "kv.proto",
            "auth.proto",
            "v3election.proto",
            "v3lock.proto",
        ],
        [&root],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
