//! `grpc.health.v1.Health` for the ADS server: one switch, serving or not, reported for the
//! whole server (`""`) and for the ADS service by name. A client that health-checks its xDS
//! cluster with gRPC (Envoy's `grpc_health_check`) sets aside a server that says `NOT_SERVING`
//! and, with `close_connections_on_host_health_failure`, moves its stream to another one.

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
}

impl AdsHealth {
    /// Serving from the start, reporting for `""` and `service`.
    pub fn new(service: &'static str) -> AdsHealth {
        AdsHealth {
            serving: Arc::new(watch::channel(true).0),
            service,
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
        let stream = WatchStream::new(status).map(|serving| Ok(answer(serving)));
        Ok(Response::new(Box::pin(stream)))
    }
}
