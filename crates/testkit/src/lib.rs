//! Test harness: real etcd servers, minted certificates, spawned autogate processes.
#![forbid(unsafe_code)]
