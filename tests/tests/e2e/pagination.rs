//! Lists are read a page at a time: `limit`, and the `next-cursor` of the page before as
//! `cursor`. Following the cursors visits every row that was there at the start exactly once,
//! even while rows are added; a cursor the API did not hand out is a 422 naming `cursor`.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use dfe_tests::{probes, Options, TestEnv};
use serde_json::{json, Value};

use crate::JOB_TIMEOUT;

/// Rows put in the registry before the listing starts.
const SEEDED: usize = 2_500;
/// Provisions running while it goes on.
const ADDED: usize = 50;

/// Every page of `list` (`member` names its rows), `limit` rows a page, following cursors;
/// returns the ids of the rows in the order seen and the number of pages.
async fn walk(env: &TestEnv, list: &str, member: &str, id: &str, limit: usize) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let sep = if list.contains('?') { '&' } else { '?' };
        let mut path = format!("{list}{sep}limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = env.get(&path).await.expect("a page");
        assert_eq!(status, 200, "{path}: {page}");
        let rows = page[member].as_array().unwrap_or_else(|| panic!("{path}: no {member}: {page}"));
        assert!(rows.len() <= limit, "{path}: {} rows", rows.len());
        ids.extend(rows.iter().map(|r| r[id].as_str().expect("an id").to_owned()));
        pages += 1;
        match &page["next-cursor"] {
            Value::Null => return (ids, pages),
            Value::String(c) => {
                assert!(!rows.is_empty(), "a page before the last is not empty");
                cursor = Some(c.clone());
            }
            other => panic!("{path}: next-cursor is {other}"),
        }
        // Give the provisions room to land between pages.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_listed_through_cursors_appear_exactly_once_each_while_more_are_provisioned() {
    let options =
        Options { workers: 1, env: vec![("DFE__PROVISIONERS__DEFAULT".into(), "noop".into())], ..Default::default() };
    let env = TestEnv::start_with(options).await.expect("environment");
    // The 2,500 rows go straight into the registry, in one statement: provisioned noop
    // instances, created in groups of ten at the same microsecond so that the id breaks
    // the ties (noop instances have nothing outside the registry to clean up).
    let stem = format!("t{}-page", dfe_tests::random_hex(6));
    let seeded = format!(
        "INSERT INTO instances (instance_id, owner_id, state, guest_location, job_id, created_at, updated_at)
         SELECT '{stem}-' || lpad(i::text, 4, '0'), '\"pager\"'::jsonb, 'provisioned', 'noop', 'seeded',
                now() - interval '1 hour' + (i / 10) * interval '1 ms', now()
           FROM generate_series(1, {SEEDED}) AS i"
    );
    probes::pg_exec(env.registry(), &seeded).await.expect("seed the registry");

    let added: Vec<String> = (0..ADDED).map(|n| format!("{stem}-new-{n:02}")).collect();
    let submitting = env.submit_all("provision", &added, |i| json!({"owner-id": "pager", "instance-id": i}));
    let walking = async {
        let walked = walk(&env, "/api/v1/instances?owner-id=pager", "instances", "instance-id", 50).await;
        (walked, time::OffsetDateTime::now_utc())
    };
    let (((ids, pages), walk_ended), jobs) = tokio::join!(walking, submitting);
    let jobs = jobs.expect("the provisions are accepted");

    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &ids {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "rows listed more than once: {twice:?}");
    let missing: Vec<String> =
        (1..=SEEDED).map(|i| format!("{stem}-{i:04}")).filter(|id| !seen.contains_key(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} seeded rows never listed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(pages >= SEEDED / 50, "{pages} pages");
    let new_seen = ids.iter().filter(|i| i.contains("-new-")).count();
    eprintln!("{} rows in {pages} pages; {new_seen} of the {ADDED} provisioned meanwhile were listed too", ids.len());
    // Newest first, across pages: the seeded rows in descending (created_at, id) order.
    let seeded_order: Vec<&String> = ids.iter().filter(|i| !i.contains("-new-")).collect();
    let mut sorted = seeded_order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seeded_order, sorted, "newest first, ties broken by id");

    for job in &jobs {
        assert_eq!(env.wait_job(job, JOB_TIMEOUT).await.expect("ends")["state"], "succeeded");
    }
    // The walk and the provisions overlapped: instances were claimed before it ended.
    let (_, newest) = env.get(&format!("/api/v1/instances?owner-id=pager&limit={ADDED}")).await.expect("newest");
    let claimed_during_walk = newest["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["created-at"].as_str())
        .filter_map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .filter(|t| *t < walk_ended)
        .count();
    eprintln!("{claimed_during_walk} of the {ADDED} new instances were claimed while the walk went on");
    assert!(claimed_during_walk > 0, "the provisions landed while the list was walked");
    // Once they are all in, a walk sees all of them.
    let (all, _) = walk(&env, "/api/v1/instances?owner-id=pager", "instances", "instance-id", 1000).await;
    assert_eq!(all.len(), SEEDED + ADDED);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), SEEDED + ADDED);
    // The jobs list pages the same way, filtered by state and type.
    let (job_ids, _) = walk(&env, "/api/v1/ops/jobs?type=provision&state=succeeded", "jobs", "job-id", 7).await;
    let mut expected: Vec<&String> = jobs.iter().collect();
    let mut listed: Vec<&String> = job_ids.iter().collect();
    expected.sort();
    listed.sort();
    assert_eq!(listed, expected);
    // The CLI follows the cursors with --all and notes (on stderr) when it did not.
    let (code, out, err) =
        env.cli(&["instances", "--owner-id", "pager", "--all", "--limit", "1000", "--json"]).await.expect("dfe");
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(answer["instances"].as_array().expect("instances").len(), SEEDED + ADDED);
    assert_eq!(answer["next-cursor"], Value::Null);
    let (code, out, err) = env.cli(&["instances", "--owner-id", "pager", "--limit", "10"]).await.expect("dfe");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 11, "a header and one page: {out}");
    assert!(err.contains("more instances follow: --all lists every page"), "{err}");
    let (code, _, err) = env.cli(&["jobs", "--type", "provision", "--limit", "1000"]).await.expect("dfe");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("more"), "the last page is not a full page to warn about: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_the_api_did_not_hand_out_is_a_422_naming_cursor() {
    let env = TestEnv::start_with(Options { workers: 0, ..Default::default() }).await.expect("environment");
    for list in ["/api/v1/instances", "/api/v1/ops/jobs", "/api/v1/snapshots"] {
        for cursor in ["garbage!", "", "bm90LWEtY3Vyc29y", "MTIzNDU2"] {
            let (status, answer) = env.get(&format!("{list}?cursor={cursor}")).await.expect("get");
            assert_eq!(status, 422, "{list}?cursor={cursor}: {answer}");
            assert_eq!(answer["errors"][0]["field"], "cursor", "{answer}");
        }
        let (status, answer) = env.get(list).await.expect("get");
        assert_eq!((status, &answer["next-cursor"]), (200, &Value::Null), "{answer}");
    }
}
