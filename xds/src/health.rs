//! `grpc.health.v1.Health` for the ADS server: one switch, serving or not, reported for the
//! whole server (`""`) and for the ADS service by name. A client that health-checks its xDS
//! cluster with gRPC (Envoy's `grpc_health_check`) sets aside a server that says `NOT_SERVING`
//! for its next connection; the stream it holds moves once the server ends it
//! ([`crate::AdsServer::end_streams`]).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The switch and the service reading it; clones share the switch.
#[derive(Debug, Clone)]
pub struct AdsHealth {
    serving: Arc<watch::Sender<bool>>,
    /// The ADS service's gRPC name, also answered.
    service: &'static str,
    /// Turns true when the server shuts down: `Watch` streams end then, or a graceful shutdown
    /// would wait on them for ever.
    closing: watch::Receiver<bool>,
}

impl AdsHealth {
    /// Serving from the start, reporting for `""` and `service`, until `closing` turns true.
    pub fn new(service: &'static str, closing: watch::Receiver<bool>) -> AdsHealth {
        AdsHealth {
            serving: Arc::new(watch::channel(true).0),
            service,
            closing,
        }
    }

    /// Sets what is reported from now on; `Watch` streams hear a change.
    pub fn set(&self, serving: bool) {
        self.serving.send_if_modified(|now| {
            let changed = *now != serving;
            *now = serving;
            changed
        });
    }

    /// The status for `service`; `None` for a service this server does not serve.
    fn status_of(&self, service: &str) -> Option<watch::Receiver<bool>> {
        (service.is_empty() || service == self.service).then(|| self.serving.subscribe())
    }
}

fn answer(serving: bool) -> HealthCheckResponse {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    HealthCheckResponse {
        status: status as i32,
    }
}

fn not_found(service: &str) -> Status {
    Status::not_found(format!(
        "this server reports health for \"\" and the ADS service only, not {service:?}"
    ))
}

#[tonic::async_trait]
impl Health for AdsHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        let status = self.status_of(service).ok_or_else(|| not_found(service))?;
        let serving = *status.borrow();
        Ok(Response::new(answer(serving)))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = &request.get_ref().service;
        let status = self.status_of(service).ok_or_else(|| not_found(service))?;
        // Each status while it changes, until the server closes.
        let statuses = WatchStream::new(status).map(|serving| Some(answer(serving)));
        let closed = WatchStream::new(self.closing.clone())
            .filter(|closing| *closing)
            .map(|_| None);
        let stream = statuses
            .merge(closed)
            .take_while(Option::is_some)
            .filter_map(|answer| answer.map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}
