//! The kubelet's gRPC APIs, generated at build time from `proto/` (see build.rs).

/// `k8s.io.kubelet.pkg.apis.dra.v1`: the DRAPlugin service.
pub mod dra {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

/// `pluginregistration`: how the kubelet learns about a plugin.
pub mod registration {
    tonic::include_proto!("pluginregistration");
}
