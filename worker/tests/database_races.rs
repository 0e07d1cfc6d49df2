//! Against the real PostgreSQL of `deploy/setup.sh`: creating what already exists counts as
//! found. A dead worker's `CREATE DATABASE` may finish on the server after the job's next
//! run looked and found nothing; that run's own create must then succeed, not fail the job.

use std::path::Path;
use std::sync::Arc;

use dfe_shared::config::Config;
use dfe_shared::ids::InstanceId;
use dfe_worker::fleet::Fleet;
use dfe_worker::provisioners::{postgres, BuildContext, InstanceContext, Names};

fn context(fleet: &Fleet, instance: &str, attempt: u32) -> InstanceContext {
    let instance_id = InstanceId::parse(instance).expect("valid id");
    InstanceContext {
        owner_id: "1".into(),
        job_id: format!("race-{instance}"),
        attempt,
        names: Names::new("dfe", &instance_id),
        instance_id,
        deployment: "dfe-worker-tests".into(),
        offering: Default::default(),
        resource_uri: "/".into(),
        docker: None,
        database: fleet.server("local").cloned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_creating_the_same_database_and_role_at_once_both_succeed() {
    if tokio::net::TcpStream::connect("127.0.0.1:5432").await.is_err() {
        panic!("PostgreSQL is not reachable on 127.0.0.1:5432: run `deploy/setup.sh` first");
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/dfe.toml");
    let config = Config::load_from(&path, Some(Default::default())).expect("shipped configuration");
    let fleet = Arc::new(Fleet::new(&config));
    let db = postgres::build(&BuildContext { config: &config, fleet: &fleet }).expect("postgres");
    for round in 0..8 {
        let instance = format!("race{round}-{}", std::process::id());
        let ctx = context(&fleet, &instance, 1);
        // Two runs of one job racing each other (as a dead run's statements and the next
        // run's do): between each one's look and its create, the other may create.
        let (first, second) = (db.connection(&ctx).expect("connection"), db.connection(&ctx).expect("connection"));
        let (a, b) = tokio::join!(db.provision(&ctx, &first), db.provision(&ctx, &second));
        let (a, b) = (a.map_err(|e| e.chain()), b.map_err(|e| e.chain()));
        let cleanup = db.deprovision(&ctx).await;
        assert!(a.is_ok() && b.is_ok(), "round {round}: both runs succeed: {a:?} / {b:?}");
        cleanup.expect("removed again");
    }
}
