//! The generated protocol types of `proto/yidi/v1` (package `yidi.v1`), clients and
//! servers included, and the encoded descriptor set for gRPC server reflection.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("yidi.v1");

/// The encoded `FileDescriptorSet` of the whole protocol, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/yidi_descriptor.bin"));
