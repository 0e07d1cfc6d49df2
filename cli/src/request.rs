//! Arguments → typed jobs.
//!
//! Every value goes through the `dfe-shared` types (the same ones dfe-api and the worker parse
//! with), so an invalid id is refused here, before anything is sent, with the field name the
//! API would use.

use std::collections::BTreeMap;

use dfe_shared::ids::{FieldError, InstanceId, OwnerId, Tag};
use dfe_shared::job::{DeprovisionJob, ExportJob, ImportJob, Job, MoveJob, ProvisionJob, ResumeJob, SuspendJob};

use crate::args::{DeprovisionArgs, ExportArgs, ImportArgs, MoveArgs, ProvisionArgs, ResumeArgs, SuspendArgs};

/// The job of `dfe provision`.
pub fn provision(a: &ProvisionArgs) -> Result<Job, FieldError> {
    Ok(Job::Provision(ProvisionJob {
        job_id: opt_tag("job-id", a.job_id.as_deref())?,
        owner_id: owner("owner-id", &a.owner_id)?,
        instance_id: instance(&a.instance_id)?,
        guest_location: opt_tag("guest-location", a.guest_location.as_deref())?,
        cluster_id: opt_tag("cluster-id", a.cluster_id.as_deref())?,
        owner_type: a.owner_type.as_deref().map(|t| owner("owner-type", t)).transpose()?,
        offerings: offerings(&a.offerings)?,
        packages: (!a.packages.is_empty()).then(|| a.packages.clone()),
    }))
}

/// The job of `dfe deprovision`.
pub fn deprovision(a: &DeprovisionArgs) -> Result<Job, FieldError> {
    Ok(Job::Deprovision(DeprovisionJob {
        job_id: opt_tag("job-id", a.job_id.as_deref())?,
        instance_id: instance(&a.instance_id)?,
        cluster_id: opt_tag("cluster-id", a.cluster_id.as_deref())?,
        // Absent rather than `false`: the job then says only what the user asked for.
        keep_database: a.keep_database.then_some(true),
    }))
}

/// The job of `dfe import`.
pub fn import(a: &ImportArgs) -> Result<Job, FieldError> {
    Ok(Job::Import(ImportJob {
        job_id: opt_tag("job-id", a.job_id.as_deref())?,
        owner_id: owner("owner-id", &a.owner_id)?,
        instance_id: instance(&a.instance_id)?,
        snapshot: tag("snapshot", &a.snapshot)?,
        guest_location: opt_tag("guest-location", a.guest_location.as_deref())?,
        cluster_id: opt_tag("cluster-id", a.cluster_id.as_deref())?,
        owner_type: a.owner_type.as_deref().map(|t| owner("owner-type", t)).transpose()?,
        clean: a.clean.then_some(true),
    }))
}

/// The job of `dfe export`.
pub fn export(a: &ExportArgs) -> Result<Job, FieldError> {
    Ok(Job::Export(ExportJob {
        job_id: opt_tag("job-id", a.job_id.as_deref())?,
        instance_id: instance(&a.instance_id)?,
        destination: opt_tag("destination", a.destination.as_deref())?,
    }))
}

/// The job of `dfe suspend`.
pub fn suspend(a: &SuspendArgs) -> Result<Job, FieldError> {
    let job = Job::Suspend(SuspendJob {
        job_id: opt_tag("job-id", a.job_id.as_deref())?,
        instance_id: instance(&a.instance_id)?,
        reason: a.reason.clone(),
    });
    job.check()?;
    Ok(job)
}

/// The job of `dfe resume`.
pub fn resume(a: &ResumeArgs) -> Result<Job, FieldError> {
    Ok(Job::Resume(ResumeJob {
        job_id: opt_tag("job-id", a.job_id.as_deref())?,
        instance_id: instance(&a.instance_id)?,
    }))
}

/// The job of `dfe move`.
pub fn move_instance(a: &MoveArgs) -> Result<Job, FieldError> {
    Ok(Job::Move(MoveJob {
        job_id: opt_tag("job-id", a.job_id.as_deref())?,
        instance_id: instance(&a.instance_id)?,
        host_id: opt_tag("host-id", a.host_id.as_deref())?,
        cluster_id: opt_tag("cluster-id", a.cluster_id.as_deref())?,
        database_server: opt_tag("database-server", a.database_server.as_deref())?,
    }))
}

/// A fresh job id for a job published straight onto the queue: a UUID v4, as the API's.
pub fn new_job_id() -> Tag {
    // A hyphenated UUID is 36 characters of [0-9a-f-], always a valid tag.
    Tag::parse(&uuid::Uuid::new_v4().to_string()).expect("a hyphenated UUID is a valid tag")
}

fn instance(s: &str) -> Result<InstanceId, FieldError> {
    InstanceId::parse(s).map_err(|m| FieldError::new("instance-id", m))
}

fn owner(field: &str, s: &str) -> Result<OwnerId, FieldError> {
    OwnerId::parse_cli(s).map_err(|m| FieldError::new(field, m))
}

fn tag(field: &str, s: &str) -> Result<Tag, FieldError> {
    Tag::parse(s).map_err(|m| FieldError::new(field, m))
}

fn opt_tag(field: &str, s: Option<&str>) -> Result<Option<Tag>, FieldError> {
    s.map(|s| tag(field, s)).transpose()
}

fn offerings(pairs: &[(String, String)]) -> Result<Option<BTreeMap<String, String>>, FieldError> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), v.clone()).is_some() {
            return Err(FieldError::new("offerings", format!("offering {k:?} is given twice")));
        }
    }
    Ok((!map.is_empty()).then_some(map))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use dfe_shared::job::JobKind;
    use serde_json::json;

    use super::*;
    use crate::args::{Cli, Command};

    /// The job `dfe <argv…>` would submit, or the field error it would print.
    fn job_of(argv: &[&str]) -> Result<Job, FieldError> {
        let cli = Cli::try_parse_from(std::iter::once("dfe").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?} should parse: {e}"));
        match &cli.command {
            Command::Provision(a) => provision(a),
            Command::Deprovision(a) => deprovision(a),
            Command::Import(a) => import(a),
            Command::Export(a) => export(a),
            Command::Suspend(a) => suspend(a),
            Command::Resume(a) => resume(a),
            Command::Move(a) => move_instance(a),
            other => panic!("not an operation: {other:?}"),
        }
    }

    fn body_of(argv: &[&str]) -> serde_json::Value {
        job_of(argv).expect("valid job").to_value()
    }

    #[test]
    fn a_move_names_its_target_in_kebab_case() {
        assert_eq!(
            body_of(&["move", "--host", "b", "--database-server", "fleet", "acme-1"]),
            json!({"instance-id": "acme-1", "host-id": "b", "database-server": "fleet"})
        );
        assert_eq!(
            body_of(&["move", "--cluster", "east", "acme-1"]),
            json!({"instance-id": "acme-1", "cluster-id": "east"})
        );
        assert_eq!(job_of(&["move", "--host", "Bad Host", "acme-1"]).expect_err("invalid").field, "host-id");
    }

    #[test]
    fn a_minimal_provision_names_only_owner_and_instance() {
        assert_eq!(body_of(&["provision", "42", "acme-1"]), json!({"owner-id": 42, "instance-id": "acme-1"}));
    }

    #[test]
    fn a_full_provision_carries_every_option_in_kebab_case() {
        let body = body_of(&[
            "provision",
            "--cluster-id",
            "east",
            "--owner-type",
            "partner",
            "--offering",
            "image=test",
            "--offering",
            "memory=small",
            "--package",
            "pkg-a",
            "--job-id",
            "job-7",
            "acme.co",
            "acme-1",
            "docker",
        ]);
        assert_eq!(
            body,
            json!({
                "job-id": "job-7",
                "owner-id": "acme.co",
                "instance-id": "acme-1",
                "guest-location": "docker",
                "cluster-id": "east",
                "owner-type": "partner",
                "offerings": {"image": "test", "memory": "small"},
                "packages": ["pkg-a"],
            })
        );
        // What the CLI sends is exactly what the services accept.
        Job::from_value(JobKind::Provision, body).expect("the API's parser accepts it");
    }

    #[test]
    fn deprovision_sends_keep_database_only_when_asked() {
        assert_eq!(body_of(&["deprovision", "acme-1"]), json!({"instance-id": "acme-1"}));
        assert_eq!(
            body_of(&["deprovision", "--keep-database", "--cluster-id", "east", "acme-1"]),
            json!({"instance-id": "acme-1", "cluster-id": "east", "keep-database": true})
        );
    }

    #[test]
    fn import_and_export_carry_their_fields() {
        let body = body_of(&["import", "--clean", "--owner-type", "3", "7", "acme-2", "snap-1", "docker"]);
        assert_eq!(
            body,
            json!({"owner-id": 7, "instance-id": "acme-2", "snapshot": "snap-1",
                   "guest-location": "docker", "owner-type": 3, "clean": true})
        );
        Job::from_value(JobKind::Import, body).expect("valid import");
        let body = body_of(&["export", "--destination", "offsite", "acme-2"]);
        assert_eq!(body, json!({"instance-id": "acme-2", "destination": "offsite"}));
        Job::from_value(JobKind::Export, body).expect("valid export");
    }

    #[test]
    fn invalid_values_are_refused_naming_the_field() {
        let err = job_of(&["provision", "1", "Acme"]).expect_err("uppercase instance id");
        assert_eq!(err.field, "instance-id");
        assert!(err.to_string().starts_with("instance-id: must start with a lowercase letter"), "{err}");
        assert_eq!(job_of(&["provision", "a b", "acme-1"]).expect_err("space").field, "owner-id");
        assert_eq!(job_of(&["provision", "1", "acme-1", "../x"]).expect_err("path").field, "guest-location");
        assert_eq!(job_of(&["import", "1", "acme-1", "a/b"]).expect_err("slash").field, "snapshot");
        assert_eq!(job_of(&["export", "--job-id", "", "acme-1"]).expect_err("empty").field, "job-id");
        let twice = job_of(&["provision", "--offering", "image=a", "--offering", "image=b", "1", "acme-1"]);
        assert_eq!(twice.expect_err("duplicate offering").field, "offerings");
    }

    #[test]
    fn generated_job_ids_are_uuids() {
        let id = new_job_id();
        assert!(uuid::Uuid::parse_str(id.as_str()).is_ok());
        assert_ne!(id, new_job_id());
    }
}
