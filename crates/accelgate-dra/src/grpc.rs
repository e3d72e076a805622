//! A gRPC server of unary methods: a method path routed to an async function of a prost
//! request. tonic decodes, encodes and frames; this is the table in front of it (what a
//! protobuf code generator would otherwise write per service). Any other path is answered
//! `UNIMPLEMENTED`, as gRPC requires.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;

type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;
type Handler = Arc<dyn Fn(http::Request<Body>) -> Reply + Send + Sync>;

/// The methods of one service, by path (`/<package>.<Service>/<Method>`).
#[derive(Clone, Default)]
pub struct UnaryServer {
    routes: HashMap<&'static str, Handler>,
}

impl UnaryServer {
    pub fn new() -> UnaryServer {
        UnaryServer::default()
    }

    /// Serves `path` with `method`.
    pub fn route<Req, Resp, F, Fut>(mut self, path: &'static str, method: F) -> UnaryServer
    where
        Req: prost::Message + Default + Send + 'static,
        Resp: prost::Message + Send + 'static,
        F: Fn(tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |request| {
            let method = method.clone();
            Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
                Ok(grpc.unary(tower::service_fn(method), request).await)
            })
        });
        self.routes.insert(path, handler);
        self
    }

    /// The paths served.
    pub fn paths(&self) -> Vec<&'static str> {
        let mut p: Vec<_> = self.routes.keys().copied().collect();
        p.sort_unstable();
        p
    }
}

impl tower::Service<http::Request<Body>> for UnaryServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Reply;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Reply {
        match self.routes.get(request.uri().path()) {
            Some(handler) => handler(request),
            None => {
                let path = request.uri().path().to_owned();
                Box::pin(async move {
                    Ok(tonic::Status::unimplemented(format!("no method {path}")).into_http())
                })
            }
        }
    }
}
