//! The cluster store: one small trait with memory, local (embedded) and etcd backends.
#![forbid(unsafe_code)]
