//! `bulwark.v1.PolicyAdmin` over the durable store. Writes are serialized by one lock; each
//! returns only after the change is on disk.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulwark_policy::spec::FaultSpec;
use bulwark_proto::v1 as pb;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::experiments::{Experiments, Record};
use crate::published::Publisher;
use crate::store::{Change, ChangeKind, Store, StoreError};

pub struct Admin {
    store: Arc<Mutex<Store>>,
    experiments: Arc<Experiments>,
    /// Given the new revision after every stored change, before the change is answered.
    changed: Arc<Publisher>,
    proxies: Arc<super::discovery::Proxies>,
}

impl Admin {
    pub fn new(
        store: Arc<Mutex<Store>>,
        changed: Arc<Publisher>,
        proxies: Arc<super::discovery::Proxies>,
        experiments: Arc<Experiments>,
    ) -> Admin {
        Admin { store, experiments, changed, proxies }
    }

    fn respond(
        &self,
        store: &Store,
        result: Result<Vec<Change>, StoreError>,
        dry_run: bool,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        match result {
            Ok(changes) => {
                let applied = !dry_run && changes.iter().any(|c| c.kind != ChangeKind::Unchanged);
                if applied {
                    self.changed.publish(store);
                }
                Ok(Response::new(pb::ApplyResponse {
                    applied,
                    revision: store.revision(),
                    changes: changes.into_iter().map(to_pb_change).collect(),
                    errors: Vec::new(),
                }))
            }
            Err(StoreError::Invalid(errors)) => Ok(Response::new(pb::ApplyResponse {
                applied: false,
                revision: store.revision(),
                changes: Vec::new(),
                errors: errors
                    .into_iter()
                    .map(|e| pb::ValidationError { policy: e.policy, path: e.path, message: e.message })
                    .collect(),
            })),
            Err(StoreError::NotFound(what)) => Err(Status::not_found(format!("{what} not found"))),
            Err(e @ StoreError::Io(_)) => Err(Status::unavailable(e.to_string())),
        }
    }
}

fn to_pb_change(c: Change) -> pb::Change {
    let (namespace, name) = split_id(&c.id);
    let kind = match c.kind {
        ChangeKind::Created => pb::change::Kind::Created,
        ChangeKind::Updated => pb::change::Kind::Updated,
        ChangeKind::Unchanged => pb::change::Kind::Unchanged,
        ChangeKind::Deleted => pb::change::Kind::Deleted,
    };
    pb::Change { namespace, name, kind: kind as i32 }
}

fn split_id(id: &str) -> (String, String) {
    let (ns, name) = id.split_once('/').unwrap_or(("default", id));
    (ns.to_string(), name.to_string())
}

fn id(namespace: &str, name: &str) -> String {
    let ns = if namespace.is_empty() { "default" } else { namespace };
    format!("{ns}/{name}")
}

fn to_pb_experiment(r: &Record) -> pb::Experiment {
    let (namespace, name) = split_id(&r.id);
    pb::Experiment {
        namespace,
        name,
        state: r.state.as_str().into(),
        reason: r.report.cause.clone().unwrap_or_default(),
        yaml: r.yaml.clone(),
        report_json: serde_json::to_string(&r.report).unwrap_or_default(),
    }
}

fn to_pb_policy(id: &str, s: &crate::store::Stored) -> pb::Policy {
    let (namespace, name) = split_id(id);
    pb::Policy { namespace, name, yaml: s.yaml.clone(), revision: s.revision }
}

#[tonic::async_trait]
impl pb::policy_admin_server::PolicyAdmin for Admin {
    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        let mut store = self.store.lock().await;
        let result = store.apply(&req.documents, req.dry_run);
        self.respond(&store, result, req.dry_run)
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Policy>, Status> {
        let req = req.into_inner();
        let id = id(&req.namespace, &req.name);
        let store = self.store.lock().await;
        store
            .get(&id)
            .map(|s| Response::new(to_pb_policy(&id, s)))
            .ok_or_else(|| Status::not_found(format!("policy {id} not found")))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let ns = req.into_inner().namespace;
        let store = self.store.lock().await;
        let policies = store
            .list()
            .filter(|(id, _)| ns.is_empty() || id.starts_with(&format!("{ns}/")))
            .map(|(id, s)| to_pb_policy(id, s))
            .collect();
        Ok(Response::new(pb::ListResponse { policies, revision: store.revision() }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = req.into_inner();
        let mut store = self.store.lock().await;
        let result = store.delete(&id(&req.namespace, &req.name));
        self.respond(&store, result, false)?;
        Ok(Response::new(pb::DeleteResponse { revision: store.revision() }))
    }

    async fn set_fault(&self, req: Request<pb::SetFaultRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        let mut spec: FaultSpec = yaml_serde::from_str::<yaml_serde::Value>(&req.faults_yaml)
            .map_err(|e| e.to_string())
            .and_then(|v| yaml_serde::from_value(v).map_err(|e| e.to_string()))
            .map_err(|e| Status::invalid_argument(format!("faults_yaml: {e}")))?;
        let wanted = match (req.for_milliseconds, req.for_seconds) {
            (0, 0) => None,
            (0, s) => Some(("for_seconds", Duration::from_secs(s))),
            (ms, _) => Some(("for_milliseconds", Duration::from_millis(ms))),
        };
        if let Some((field, wanted)) = wanted {
            let longest = bulwark_policy::faults::MAX_FAULT_DURATION;
            if wanted > longest {
                return Err(Status::invalid_argument(format!(
                    "{field}: {} is longer than a fault may last ({} s, 7 days)",
                    bulwark_policy::duration::format(wanted),
                    longest.as_secs()
                )));
            }
            // Absolute, so every proxy drops the faults at the same moment; written to the
            // millisecond, rounded up, so a fault never ends early.
            let at = SystemTime::now()
                .checked_add(wanted)
                .ok_or_else(|| Status::invalid_argument(format!("{field}: past the end of time")))?;
            spec.expires_at = Some(bulwark_policy::faults::format_rfc3339(at));
            spec.for_ = None;
        }
        let route = req.route.clone();
        let mut store = self.store.lock().await;
        let result = store.edit(&id(&req.namespace, &req.name), move |doc| doc.set_route_faults(&route, Some(spec)));
        self.respond(&store, result, false)
    }

    async fn clear_fault(&self, req: Request<pb::ClearFaultRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        let route = req.route.clone();
        let mut store = self.store.lock().await;
        let result = store.edit(&id(&req.namespace, &req.name), move |doc| doc.set_route_faults(&route, None));
        self.respond(&store, result, false)
    }

    async fn run_experiment(
        &self,
        req: Request<pb::RunExperimentRequest>,
    ) -> Result<Response<pb::RunExperimentResponse>, Status> {
        let yaml = req.into_inner().yaml;
        if yaml.len() > bulwark_policy::document::MAX_DOCUMENT_BYTES {
            return Err(Status::invalid_argument("yaml: over 1 MiB"));
        }
        Ok(Response::new(match self.experiments.run(&yaml).await {
            Ok(r) => pb::RunExperimentResponse { experiment: Some(to_pb_experiment(&r)), errors: Vec::new() },
            Err(errors) => pb::RunExperimentResponse {
                experiment: None,
                errors: errors
                    .into_iter()
                    .map(|e| pb::ValidationError { policy: e.policy, path: e.path, message: e.message })
                    .collect(),
            },
        }))
    }

    async fn get_experiment(&self, req: Request<pb::GetExperimentRequest>) -> Result<Response<pb::Experiment>, Status> {
        let req = req.into_inner();
        let id = id(&req.namespace, &req.name);
        self.experiments
            .get(&id)
            .map(|r| Response::new(to_pb_experiment(&r)))
            .ok_or_else(|| Status::not_found(format!("experiment {id} not found")))
    }

    async fn list_experiments(
        &self,
        req: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, Status> {
        let experiments = self.experiments.list(&req.into_inner().namespace).iter().map(to_pb_experiment).collect();
        Ok(Response::new(pb::ListExperimentsResponse { experiments }))
    }

    async fn abort_experiment(
        &self,
        req: Request<pb::AbortExperimentRequest>,
    ) -> Result<Response<pb::Experiment>, Status> {
        let req = req.into_inner();
        let id = id(&req.namespace, &req.name);
        match self.experiments.abort(&id, &req.reason) {
            Ok(r) => Ok(Response::new(to_pb_experiment(&r))),
            Err(e) if e.ends_with("not found") => Err(Status::not_found(e)),
            Err(e) => Err(Status::failed_precondition(e)),
        }
    }

    async fn list_proxies(
        &self,
        _req: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        let current_version = self.changed.current().version();
        Ok(Response::new(pb::ListProxiesResponse { proxies: self.proxies.list(), current_version }))
    }
}
