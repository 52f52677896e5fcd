//! Bulwark's public gRPC API, `bulwark.v1`: generated wire types, clients and servers only.
//! The contract and its documentation live in `bulwark/v1/policy.proto`.

pub mod v1 {
    tonic::include_proto!("bulwark.v1");

    /// Encoded descriptors of `bulwark.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("bulwark_v1_descriptor");
}
