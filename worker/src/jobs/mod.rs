//! The job kinds: one file each, declaring its name, its body and what an abort leaves
//! behind ([`crate::runner::JobSpec`]). A body knows nothing of AMQP: it claims its
//! instance through the registry's state machine, works through the manager's
//! sub-provisioners, publishes its sub-events, and returns an [`Outcome`] that the runner
//! records and announces.

mod deprovision;
mod export;
mod import;
mod moving;
mod provision;
mod resume;
mod suspend;

use std::sync::Arc;
use std::time::Duration;

use dfe_registry::Registry;
use dfe_shared::config::Config;

use crate::manager::Manager;
use crate::runner::JobSpec;
pub use crate::runner::Outcome;

/// What job bodies work with.
#[derive(Clone)]
pub struct Env {
    /// The registry.
    pub registry: Registry,
    /// Provisioners by guest location.
    pub manager: Arc<Manager>,
    /// The configuration.
    pub config: Arc<Config>,
    /// The snapshot destinations, with their clients.
    pub stores: dfe_shared::store::Stores,
    /// The identities of `[snapshots] identity-file`, which decrypt encrypted snapshots.
    pub identities: Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
}

impl Env {
    /// How long a job may run.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.config.worker.job_timeout_secs)
    }
}

/// Every job kind the worker serves: the one line to add for a new kind.
pub fn kinds() -> Vec<Arc<dyn JobSpec<Env>>> {
    vec![
        Arc::new(provision::Provision),
        Arc::new(deprovision::Deprovision),
        Arc::new(import::Import),
        Arc::new(export::Export),
        Arc::new(suspend::Suspend),
        Arc::new(resume::Resume),
        Arc::new(moving::Move),
    ]
}

/// The failure of a body handed a job of another kind (a bug in the dispatch).
fn wrong_kind(expected: &str) -> Outcome {
    Outcome::failed_with(
        "internal-error",
        format!("the {expected} body was handed another kind of job"),
        dfe_registry::Transition::None,
    )
}
