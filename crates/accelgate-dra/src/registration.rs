//! The registration socket the kubelet's plugin watcher finds in `plugins_registry`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::grpc::UnaryServer;
use crate::proto::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse, GET_INFO,
    NOTIFY_REGISTRATION_STATUS,
};

/// The plugin type the kubelet routes to its DRA manager.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The gRPC services served at the endpoint, as the kubelet names them.
pub const SUPPORTED_VERSIONS: &[&str] = &["v1.DRAPlugin"];

pub struct RegistrationService {
    pub driver: String,
    /// The DRA socket's path, as the kubelet (on the host) dials it.
    pub endpoint: String,
    /// Set once the kubelet reports that it registered us.
    pub registered: Arc<AtomicBool>,
}

impl RegistrationService {
    /// The gRPC server of this service, for the registration socket.
    pub fn server(self: Arc<Self>) -> UnaryServer {
        let info = self.clone();
        UnaryServer::new()
            .route(GET_INFO, move |r| {
                let s = info.clone();
                async move { s.get_info(r).await }
            })
            .route(NOTIFY_REGISTRATION_STATUS, move |r| {
                let s = self.clone();
                async move { s.notify_registration_status(r).await }
            })
    }

    async fn get_info(
        &self,
        _request: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<PluginInfo>, tonic::Status> {
        Ok(tonic::Response::new(PluginInfo {
            r#type: PLUGIN_TYPE.to_owned(),
            name: self.driver.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: tonic::Request<RegistrationStatus>,
    ) -> Result<tonic::Response<RegistrationStatusResponse>, tonic::Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("the kubelet registered the plugin");
        } else {
            tracing::error!("the kubelet refused the plugin: {}", status.error);
        }
        self.registered
            .store(status.plugin_registered, Ordering::Relaxed);
        Ok(tonic::Response::new(RegistrationStatusResponse {}))
    }
}
