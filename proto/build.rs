// Generates bulwark.v1 with a vendored protoc, so building needs no system protoc; also writes
// the descriptor set that server reflection serves.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=bulwark/v1/policy.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("bulwark_v1_descriptor.bin"))
        .compile_protos(&["bulwark/v1/policy.proto"], &["."])
        .expect("compile bulwark/v1/policy.proto");
}
