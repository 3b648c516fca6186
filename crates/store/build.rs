//! Checks, at build time, that the vendored protoc that `scripts/protoc` hands to etcd-client's
//! build script exists for this platform, so a missing binary fails here with its reason rather
//! than as "protoc failed" inside a dependency.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(err) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning={err}; set PROTOC to a protoc binary to build etcd-client");
    }
}
