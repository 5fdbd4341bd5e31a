//! Compiles the `.proto` files with `protox` (pure Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files =
        ["proto/callplus/v1/types.proto", "proto/callplus/v1/signal.proto", "proto/callplus/v1/relay.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // The service stubs need tonic, which the sans-IO core must not pull in.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .build_transport(false)
        // Small per-stream buffers: see `src/codec.rs`.
        .codec_path("crate::codec::SignalCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
