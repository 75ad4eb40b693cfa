//! Compiles etcd v3's API (`proto/etcd/*.proto`, our own copies) into Rust for the
//! etcd front (`server::etcd`). protox parses the files in Rust, so the build needs no
//! `protoc`: a Debian machine with only cargo builds mmapd as before. pbjson-build adds
//! the proto3 JSON mapping (serde) the `/v3/*` JSON gateway speaks, with the proto
//! field names as etcd's gateway writes them (`cluster_id`, `ID`, `TTL`).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/etcd/kv.proto", "proto/etcd/rpc.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto/etcd"])?;
    let encoded = descriptors.encode_to_vec();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .build(&[".mvccpb", ".etcdserverpb"])?;
    Ok(())
}
