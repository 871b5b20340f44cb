//! `repo init`, `repo info`, `key generate`, keys and the config file,
//! driven through the binary as a DBA would.

mod common;

use common::*;

#[test]
fn repo_info_shows_identity_bound_from_pgdata_and_from_server() {
    for version in PgVersion::all() {
        let c = Cluster::new(ClusterOptions::new(version));
        let sysid = c.system_identifier().to_string();

        let by_pgdata = c.dir().join("repo-pgdata");
        let data = c.data_dir();
        dbb(["repo", "init", "--repo"]).arg(&by_pgdata).arg("--pgdata").arg(&data).assert_success();
        let info = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&by_pgdata).assert_success());
        assert_eq!(info["cluster"]["system_identifier"], sysid.as_str(), "{version}");
        assert_eq!(info["cluster"]["pg_version_major"], version.major(), "{version}");
        assert_eq!(info["cluster"]["wal_segment_size"], 16 * 1024 * 1024);
        assert_eq!(info["cluster"]["bound_from"], "pg_control");
        assert_eq!(info["format_version"], 1);
        assert_eq!(info["compression"]["algorithm"], "zstd");
        assert!(info["encryption"].is_null());

        let by_server = c.dir().join("repo-server");
        dbb(["repo", "init", "--compress", "lz4", "--repo"]).arg(&by_server).args(c.conn_args()).assert_success();
        let info = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&by_server).assert_success());
        assert_eq!(info["cluster"]["system_identifier"], sysid.as_str());
        assert_eq!(info["cluster"]["pg_version_major"], version.major());
        assert_eq!(info["cluster"]["bound_from"], "server");
        assert_eq!(info["compression"]["algorithm"], "lz4");

        // Human output says the same.
        let text = dbb(["repo", "info", "--repo"]).arg(&by_server).assert_success().stdout;
        assert!(text.contains(&sysid) && text.contains(&format!("PostgreSQL {}", version.major())), "{text}");
    }
}

#[test]
fn repo_init_without_a_cluster_is_unbound_and_never_guesses() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let out = dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains("not bound"), "{}", out.stdout);
    let info = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&repo).assert_success());
    assert!(info["cluster"].is_null());
}

#[test]
fn repo_init_refuses_existing_nonempty_and_unwritable_paths() {
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    let before = std::fs::read(repo.join("dbbackup.json")).unwrap();
    let out = dbb(["repo", "init", "--compress", "gzip", "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains("already exists") && out.stderr.contains(&repo.display().to_string()),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(repo.join("dbbackup.json")).unwrap(), before, "metadata was rewritten");

    let other = d.mkdir("not-a-repo");
    d.write("not-a-repo/notes.txt", "precious");
    let out = dbb(["repo", "init", "--repo"]).arg(&other).assert_code(1);
    assert!(out.stderr.contains("not empty") && out.stderr.contains("notes.txt"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "precious");

    // A directory the postgres user cannot write into.
    let locked = d.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let target = locked.join("repo");
    let out = dbb(["repo", "init", "--repo"]).arg(&target).output();
    if run_as_user().is_some() || out.status != 0 {
        assert_eq!(out.status, 1, "{out:?}");
        assert!(out.stderr.contains(&target.display().to_string()), "{}", out.stderr);
        assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    }
}

#[test]
fn read_only_commands_on_a_missing_repository_never_suggest_creating_one() {
    let d = TestDir::new();
    let missing = d.join("nowhere");
    let out = dbb(["repo", "info", "--repo"]).arg(&missing).assert_code(1);
    assert!(out.stderr.contains("does not exist") && out.stderr.contains("mounted"), "{}", out.stderr);
    assert!(!out.stderr.contains("repo init"), "{}", out.stderr);
    let out =
        dbb(["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).arg("--repo").arg(&missing).assert_code(128);
    assert!(out.stderr.contains("does not exist") && out.stderr.contains("mounted"), "{}", out.stderr);
    assert!(!out.stderr.contains("repo init"), "{}", out.stderr);
    for args in [&["wal", "list"][..], &["backup", "list"], &["wal", "verify"], &["wal", "timeline"]] {
        let out = dbb(args).arg("--repo").arg(&missing).assert_code(1);
        assert!(out.stderr.contains("mounted") && !out.stderr.contains("repo init"), "{args:?}: {}", out.stderr);
    }
    let out = dbb(["repo", "info"]).assert_code(1);
    assert!(out.stderr.contains("no repository given") && out.stderr.contains("--repo"), "{}", out.stderr);
    // An existing directory that is not a repository.
    let plain = d.mkdir("plain");
    let out = dbb(["repo", "info", "--repo"]).arg(&plain).assert_code(1);
    assert!(out.stderr.contains("not a dbbackup repository"), "{}", out.stderr);
    assert!(!out.stderr.contains("repo init"), "{}", out.stderr);
}

#[test]
fn a_newer_repository_format_is_refused_and_left_untouched() {
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    let meta = repo.join("dbbackup.json");
    let text = std::fs::read_to_string(&meta).unwrap().replace("\"format_version\": 1", "\"format_version\": 7");
    std::fs::write(&meta, &text).unwrap();
    let out = dbb(["repo", "info", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("format version 7 is newer than this dbbackup supports (2)"), "{}", out.stderr);
    let seg = d.write("000000010000000000000001", vec![0u8; 1 << 20]);
    let out = dbb(["wal", "archive"]).arg(&seg).arg("--repo").arg(&repo).assert_code(1);
    assert!(out.stderr.contains("newer than this dbbackup"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&meta).unwrap(), text);
    assert!(!repo.join("wal").exists());
}

#[test]
fn key_generate_writes_a_private_hex_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let d = TestDir::new();
    let path = d.join("key");
    dbb(["key", "generate", "--output"]).arg(&path).assert_success();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.trim_end().chars().all(|c| c.is_ascii_hexdigit()) && text.ends_with('\n'));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let out = dbb(["key", "generate", "--output"]).arg(&path).assert_code(1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let out = dbb(["key", "generate"]).assert_success();
    assert_eq!(out.stdout.trim().len(), 64);
    assert_ne!(out.stdout, text);
}

#[test]
fn malformed_keys_are_refused_before_any_work() {
    let d = TestDir::new();
    let cases: Vec<(&str, String, &str)> = vec![
        ("short", "abcd\n".into(), "4 characters of hex"),
        ("long", format!("{}\n", "ab".repeat(33)), "66 characters of hex"),
        ("empty", String::new(), "empty"),
        ("text", "correct horse battery staple\n".into(), "not hex or base64"),
        ("b64-16", "AAAAAAAAAAAAAAAAAAAAAA==\n".into(), "base64 of 16 bytes"),
    ];
    for (name, content, expect) in cases {
        let f = private_file(&d, name, content);
        let repo = d.join(format!("repo-{name}"));
        let out =
            dbb(["repo", "init", "--encrypt", "--repo"]).arg(&repo).arg("--encryption-key-file").arg(&f).assert_code(1);
        assert!(out.stderr.contains(expect) && out.stderr.contains(&f.display().to_string()), "{name}: {}", out.stderr);
        assert!(!repo.exists(), "{name}: repository created despite a bad key");
    }
    // The same through the environment variable.
    let repo = d.join("repo-env");
    let out =
        dbb(["repo", "init", "--encrypt", "--repo"]).arg(&repo).env("DBBACKUP_ENCRYPTION_KEY", "1234").assert_code(1);
    assert!(
        out.stderr.contains("DBBACKUP_ENCRYPTION_KEY") && out.stderr.contains("4 characters of hex"),
        "{}",
        out.stderr
    );
    // --encrypt with no key at all.
    let out = dbb(["repo", "init", "--encrypt", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("--encrypt needs a key") && out.stderr.contains("key generate"), "{}", out.stderr);
    assert!(!repo.exists());
    // A named variable that is not set.
    let out = dbb(["repo", "init", "--encrypt", "--encryption-key-env", "MY_KEY", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("MY_KEY") && out.stderr.contains("not set"), "{}", out.stderr);
}

#[test]
fn an_encrypted_repository_needs_its_own_key() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let good = key_file(&d, "good", 0x11);
    let bad = key_file(&d, "bad", 0x22);
    let out = dbb(["repo", "init", "--encrypt", "--json", "--repo"])
        .arg(&repo)
        .arg("--encryption-key-file")
        .arg(&good)
        .assert_success();
    let fp = json(&out)["encryption"]["key_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 32);
    // base64 of the same key works too: the key is accepted, and the
    // repository, bound to no cluster yet, cannot answer "not archived".
    let b64 = private_file(&d, "good.b64", "ERERERERERERERERERERERERERERERERERERERERERE=\n");
    let dest = d.join("dest");
    let out = dbb(["wal", "fetch", "000000010000000000000001"])
        .arg(&dest)
        .arg("--repo")
        .arg(&repo)
        .arg("--encryption-key-file")
        .arg(&b64)
        .assert_code(128);
    assert!(out.stderr.contains("not bound to any cluster"), "{}", out.stderr);

    let out = dbb(["wal", "fetch", "000000010000000000000001"]).arg(&dest).arg("--repo").arg(&repo).assert_code(128);
    assert!(
        out.stderr.contains("is encrypted") && out.stderr.contains(&fp) && out.stderr.contains("--encryption-key-file"),
        "{}",
        out.stderr
    );
    let out = dbb(["wal", "fetch", "000000010000000000000001"])
        .arg(&dest)
        .arg("--repo")
        .arg(&repo)
        .arg("--encryption-key-file")
        .arg(&bad)
        .assert_code(128);
    assert!(out.stderr.contains("wrong encryption key") && out.stderr.contains(&fp), "{}", out.stderr);
    let seg = d.write("000000010000000000000001", vec![0u8; 1 << 20]);
    let out = dbb(["wal", "archive"]).arg(&seg).arg("--repo").arg(&repo).assert_code(1);
    assert!(out.stderr.contains("no key was given"), "{}", out.stderr);
    assert!(!dest.exists());
}

#[test]
fn config_file_errors_name_file_line_and_key() {
    let d = TestDir::new();
    let cfg = d.write("bad.toml", "repo = \"/tmp/x\"\nrepository_path = \"/tmp/y\"\n");
    let out = dbb(["repo", "info", "--config"]).arg(&cfg).assert_code(2);
    assert!(out.stderr.contains(&cfg.display().to_string()), "{}", out.stderr);
    assert!(out.stderr.contains("line 2") && out.stderr.contains("repository_path"), "{}", out.stderr);
    let cfg = d.write("type.toml", "port = \"five\"\n");
    let out = dbb(["repo", "info", "--config"]).arg(&cfg).assert_code(2);
    assert!(out.stderr.contains("line 1") && out.stderr.contains("port"), "{}", out.stderr);
    let out = dbb(["repo", "info", "--config"]).arg(d.join("missing.toml")).assert_code(2);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
}

#[test]
fn flags_win_over_environment_and_environment_over_config_file() {
    let d = TestDir::new();
    let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
    dbb(["repo", "init", "--compress", "zstd", "--repo"]).arg(&a).assert_success();
    dbb(["repo", "init", "--compress", "lz4", "--repo"]).arg(&b).assert_success();
    dbb(["repo", "init", "--compress", "gzip", "--repo"]).arg(&c).assert_success();
    let cfg = d.write("dbbackup.toml", format!("repo = \"{}\"\n", a.display()));
    let codec = |cmd: &mut Cmd| json(&cmd.assert_success())["compression"]["algorithm"].as_str().unwrap().to_string();
    assert_eq!(codec(dbb(["repo", "info", "--json", "--config"]).arg(&cfg)), "zstd");
    assert_eq!(codec(dbb(["repo", "info", "--json", "--config"]).arg(&cfg).env("DBBACKUP_REPO", &b)), "lz4");
    assert_eq!(
        codec(dbb(["repo", "info", "--json", "--config"]).arg(&cfg).env("DBBACKUP_REPO", &b).arg("--repo").arg(&c)),
        "gzip"
    );
    // DBBACKUP_CONFIG names the file; the --archive-dir alias works.
    assert_eq!(codec(dbb(["repo", "info", "--json"]).env("DBBACKUP_CONFIG", &cfg)), "zstd");
    assert_eq!(codec(dbb(["repo", "info", "--json", "--archive-dir"]).arg(&b)), "lz4");
    assert_eq!(codec(dbb(["repo", "info", "--json", "--wal-archive"]).arg(&c)), "gzip");
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["repo", "--help"],
        vec!["key", "--help"],
        vec!["wal", "--help"],
        vec!["pitr", "--help"],
        vec!["backup", "--help"],
        vec!["restore", "--help"],
        vec!["repo", "init", "--help"],
        vec!["repo", "info", "--help"],
        vec!["key", "generate", "--help"],
        vec!["wal", "archive", "--help"],
        vec!["wal", "fetch", "--help"],
        vec!["wal", "list", "--help"],
        vec!["wal", "timeline", "--help"],
        vec!["wal", "verify", "--help"],
        vec!["wal", "cleanup", "--help"],
        vec!["pitr", "enable", "--help"],
        vec!["pitr", "disable", "--help"],
        vec!["pitr", "status", "--help"],
        vec!["backup", "base", "--help"],
        vec!["backup", "list", "--help"],
        vec!["backup", "show", "--help"],
        vec!["backup", "verify", "--help"],
        vec!["backup", "delete", "--help"],
        vec!["backup", "expire", "--help"],
        vec!["restore", "pitr", "--help"],
    ] {
        let out = dbb(&args).assert_success();
        assert!(out.stdout.contains("Usage:"), "{args:?}: {}", out.stdout);
        if args.len() >= 2 {
            assert!(out.stdout.contains("Example"), "{args:?} has no example: {}", out.stdout);
        }
    }
    let out = dbb(["wal", "fetch", "--help"]).assert_success();
    assert!(out.stdout.contains("128"), "{}", out.stdout);
    // Usage errors exit 2.
    dbb(["repo", "init", "--compress", "brotli"]).assert_code(2);
    dbb(["no-such-command"]).assert_code(2);
}
