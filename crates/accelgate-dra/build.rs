//! Generates the kubelet gRPC types and services from proto/ with protox (a Rust protobuf
//! compiler), so building needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/dra_v1.proto", "proto/pluginregistration_v1.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
