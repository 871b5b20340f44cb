//! `wal list`, `wal timeline`, `wal verify` and `repo info` on a repository
//! holding two real timelines.

mod common;

use common::*;
use serde_json::Value;

fn run(t: &TwoTimelines, args: &[&str]) -> Output {
    dbb(args).arg("--repo").arg(&t.repo).output()
}

fn catalog_story(version: PgVersion) {
    let t = two_timelines(version, None, "");

    // list: every kind, sorted by timeline then position.
    let out = run(&t, &["wal", "list", "--json"]);
    assert_eq!(out.status, 0, "{out:?}");
    let list: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = list.iter().map(|o| o["name"].as_str().unwrap()).collect();
    for n in t.tl1.iter().chain(&t.tl2) {
        assert!(names.contains(&n.as_str()), "{n} missing from {names:?}");
    }
    assert!(names.contains(&"00000002.history"), "{names:?}");
    let kinds: Vec<&str> = list.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"history") && kinds.contains(&"backup") && kinds.contains(&"segment"), "{kinds:?}");
    let mut sorted = list.clone();
    sorted.sort_by_key(|o| (o["timeline"].as_u64().unwrap(), o["name"].as_str().unwrap().to_string()));
    assert_eq!(
        list.iter().map(|o| o["timeline"].as_u64()).collect::<Vec<_>>(),
        sorted.iter().map(|o| o["timeline"].as_u64()).collect::<Vec<_>>()
    );
    let seg = list.iter().find(|o| o["kind"] == "segment").unwrap();
    assert_eq!(seg["original_size"], 16 * 1024 * 1024);
    assert_eq!(seg["codec"], "zstd");
    assert_eq!(seg["encrypted"], false);
    let hist = list.iter().find(|o| o["kind"] == "history").unwrap();
    assert!(hist["original_size"].as_u64().unwrap() > 0);
    let only2: Vec<Value> =
        serde_json::from_str(&run(&t, &["wal", "list", "--json", "--timeline", "2"]).stdout).unwrap();
    assert!(!only2.is_empty() && only2.iter().all(|o| o["timeline"] == 2));
    let text = run(&t, &["wal", "list"]).stdout;
    assert!(text.contains("NAME") && text.contains(&t.tl2[0]) && text.contains("objects"), "{text}");

    // timeline: parent and switch LSN exactly as PostgreSQL's history file says.
    let history = std::fs::read_to_string(t.promoted.data_dir().join("pg_wal/00000002.history")).unwrap();
    let line = history.lines().find(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap();
    let switch_lsn = line.split('\t').nth(1).unwrap();
    let out = run(&t, &["wal", "timeline", "--json"]);
    assert_eq!(out.status, 0, "{out:?}");
    let tls = json(&out)["timelines"].as_array().unwrap().clone();
    assert_eq!(tls.len(), 2, "{tls:?}");
    assert_eq!(tls[0]["timeline"], 1);
    assert!(tls[0]["parent"].is_null());
    assert_eq!(tls[0]["first_segment"], t.tl1[0].as_str());
    assert_eq!(tls[1]["timeline"], 2);
    assert_eq!(tls[1]["parent"], 1);
    assert_eq!(tls[1]["switch_lsn"], switch_lsn);
    assert_eq!(tls[1]["last_segment"], t.tl2.last().unwrap().as_str());
    let text = run(&t, &["wal", "timeline"]).stdout;
    assert!(text.contains(switch_lsn), "{text}");

    // verify: all good.
    let out = run(&t, &["wal", "verify", "--json"]);
    assert_eq!(out.status, 0, "{out:?}");
    let report = json(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["verified"], report["objects"]);

    // repo info: counts and timelines.
    let info = json(&run(&t, &["repo", "info", "--json"]));
    assert_eq!(info["wal"]["timelines"], serde_json::json!([1, 2]));
    assert_eq!(info["wal"]["newest_segment"], t.tl2.last().unwrap().as_str());
    assert_eq!(info["wal"]["history_files"], 1);
    assert!(info["wal"]["compression_ratio"].as_f64().unwrap() > 1.0);

    // One segment deleted in the middle of timeline 1: exactly that gap.
    let victim = &t.tl1[2];
    let victim_obj = object_for(&t.repo, victim);
    let saved = std::fs::read(&victim_obj).unwrap();
    std::fs::remove_file(&victim_obj).unwrap();
    let out = run(&t, &["wal", "verify", "--json"]);
    assert_eq!(out.status, 1, "{out:?}");
    let report = json(&out);
    assert_eq!(
        report["gaps"],
        serde_json::json!([{"timeline": 1, "first_missing": victim, "last_missing": victim, "count": 1}])
    );
    assert_eq!(report["problems"], serde_json::json!([]));
    let text = run(&t, &["wal", "verify"]).stdout;
    assert!(text.contains(&format!("GAP      timeline 1: {victim} is missing")), "{text}");
    std::fs::write(&victim_obj, &saved).unwrap();
    chown_to_run_user(&victim_obj);

    // One flipped byte: verify names exactly that object.
    let bad = object_for(&t.repo, &t.tl2[0]);
    let mut bytes = std::fs::read(&bad).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&bad, &bytes).unwrap();
    let out = run(&t, &["wal", "verify", "--json"]);
    assert_eq!(out.status, 1, "{out:?}");
    let report = json(&out);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let rel = bad.strip_prefix(&t.repo).unwrap().display().to_string();
    assert_eq!(problems[0]["path"], rel.as_str());
    assert_eq!(report["gaps"], serde_json::json!([]));
    let text = run(&t, &["wal", "verify"]).stdout;
    assert!(text.contains(&format!("BAD      {rel}")), "{text}");
}

#[test]
fn pg15_list_timeline_verify_across_a_promotion() {
    catalog_story(PgVersion::V15);
}

#[test]
fn pg18_list_timeline_verify_across_a_promotion() {
    catalog_story(PgVersion::V18);
}

#[test]
fn strays_unreadable_objects_and_corrupt_history_are_reported() {
    let t = two_timelines(PgVersion::V15, None, "");
    // A stray file: listed as unknown by verify; list ignores it.
    let stray_dir = t.repo.join("wal/0000000100000000");
    std::fs::write(stray_dir.join("notes.txt"), "hello").unwrap();
    std::fs::write(t.repo.join("wal/README"), "hello").unwrap();
    let out = run(&t, &["wal", "list", "--json"]);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(!out.stdout.contains("notes.txt"));
    let out = run(&t, &["wal", "verify", "--json"]);
    assert_eq!(out.status, 1);
    let report = json(&out);
    let unknown: Vec<&str> = report["unknown"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(unknown, vec!["wal/0000000100000000/notes.txt", "wal/README"]);
    std::fs::remove_file(stray_dir.join("notes.txt")).unwrap();
    std::fs::remove_file(t.repo.join("wal/README")).unwrap();

    // An unreadable object: reported, and every other object still verified.
    let locked = object_for(&t.repo, &t.tl1[1]);
    Cmd::new("chmod").arg("000").arg(&locked).as_root().assert_success();
    let out = run(&t, &["wal", "verify", "--json"]);
    if run_as_user().is_some() {
        assert_eq!(out.status, 1, "{out:?}");
        let report = json(&out);
        assert_eq!(report["problems"].as_array().unwrap().len(), 1);
        assert!(report["problems"][0]["error"].as_str().unwrap().contains("Permission denied"));
        assert_eq!(report["verified"].as_u64().unwrap() + 1, report["objects"].as_u64().unwrap());
    }
    Cmd::new("chmod").arg("600").arg(&locked).as_root().assert_success();

    // A corrupt history file: a clear error naming it.
    let hist = object_for(&t.repo, "00000002.history");
    std::fs::write(&hist, b"this is not zstd").unwrap();
    let out = run(&t, &["wal", "timeline"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("00000002.history"), "{}", out.stderr);
    let out = run(&t, &["wal", "verify"]);
    assert_eq!(out.status, 1);
    assert!(out.stdout.contains("00000002.history"), "{}", out.stdout);
}
