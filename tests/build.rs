// Generates the test gRPC service with a vendored protoc, so no system protoc is needed.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-changed=proto/health.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/echo.proto", "proto/health.proto"], &["proto"])
        .expect("compile the test protos");
}
