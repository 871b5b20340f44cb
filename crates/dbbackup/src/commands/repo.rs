//! `dbbackup repo init` and `repo info`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use dbbackup_core::info::{recoverable, WalSummary};
use dbbackup_core::pg::server_identity;
use dbbackup_core::repo::{check_init_key_intent, identity_from_pgdata, identity_from_server, InitOptions, Repository};
use dbbackup_format::meta::{ClusterIdentity, RepoMeta};
use dbbackup_format::Codec;
use serde_json::json;

use crate::cli::{InitArgs, RepoCommand};
use crate::context::Ctx;
use crate::output::{human_bytes, print_json};

pub fn run(ctx: &Ctx, c: RepoCommand) -> Result<ExitCode> {
    match c {
        RepoCommand::Init(a) => init(ctx, a),
        RepoCommand::Info => info(ctx),
    }
}

/// The cluster identity, when the user told us where the cluster is.
fn find_identity(ctx: &Ctx) -> Result<Option<ClusterIdentity>> {
    if let Some(pgdata) = &ctx.g.pgdata {
        return Ok(Some(identity_from_pgdata(pgdata)?));
    }
    if ctx.conn_given() {
        let mut client = ctx.conn().connect()?;
        return Ok(Some(identity_from_server(server_identity(&mut client)?)));
    }
    Ok(None)
}

fn init(ctx: &Ctx, a: InitArgs) -> Result<ExitCode> {
    let storage = ctx.storage()?;
    check_init_key_intent(&ctx.keys(), a.codec.encrypt, &storage.location())?;
    let key = ctx.keys().load()?;
    let key = match (a.codec.encrypt, key) {
        (true, None) => bail!(
            "--encrypt needs a key: create one with `dbbackup key generate --output FILE`, then pass --encryption-key-file FILE or set {}",
            ctx.keys().env_name()
        ),
        (true, Some(k)) => Some(k),
        (false, _) => None,
    };
    // Refuse an existing repository before asking the server anything.
    if let Ok(meta) = Repository::read_meta(storage.as_ref()) {
        let _ = meta;
        bail!(
            "repository {} already exists: nothing was changed (see it with `dbbackup repo info --repo {}`)",
            storage.location(),
            storage.location()
        );
    }
    let identity = find_identity(ctx)?;
    ctx.warn_unused_default_key(key.is_some(), &format!("the new repository {}", storage.location()));
    let codec = a.codec.compress.unwrap_or_default();
    let repo = Repository::init(storage, InitOptions { codec, level: a.codec.compress_level, key, identity })?;
    if ctx.g.json {
        print_json(&info_json(&repo.location(), repo.meta()));
    } else {
        println!("created repository {}", repo.location());
        print_info(&repo.location(), repo.meta());
        if repo.identity().is_none() {
            println!();
            println!("The repository is not bound to a cluster yet: it binds to the cluster of the first archived");
            println!("segment. Give --pgdata DIR or connection options (--host/--port) to bind it now.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info(ctx: &Ctx) -> Result<ExitCode> {
    let repo = Repository::open_for_listing(ctx.storage()?)?;
    let wal = WalSummary::of(&repo)?;
    let (backups, unreadable) = dbbackup_core::backup::list(&repo)?;
    for e in &unreadable {
        eprintln!("dbbackup: warning: {e}");
    }
    let complete: Vec<_> =
        backups.iter().filter(|m| m.status == dbbackup_format::manifest::BackupStatus::Complete).collect();
    let range = recoverable(&repo, &wal, &backups);
    let oldest = range
        .oldest
        .as_ref()
        .map(|m| json!({"backup": m.id, "time": m.stop_time, "lsn": m.stop_lsn, "timeline": m.timeline}));
    let newest_json = range.newest.as_ref().map(|n| {
        if n.gap {
            json!({"segment": n.segment, "lsn": n.lsn, "archived_at": null, "gap": true})
        } else {
            json!({"segment": n.segment, "lsn": n.lsn, "archived_at": n.archived_at})
        }
    });
    let backups_json = json!({
        "total": backups.len(),
        "complete": complete.len(),
        "newest": complete.last().map(|m| m.id.clone()),
        "oldest": complete.first().map(|m| m.id.clone()),
        "stored_bytes": backups.iter().map(|m| m.stored_bytes).sum::<u64>(),
        "oldest_recoverable_point": oldest,
        "newest_recoverable_point": newest_json,
    });
    if ctx.g.json {
        let mut v = info_json(&repo.location(), repo.meta());
        v["wal"] = serde_json::to_value(&wal)?;
        v["backups"] = backups_json;
        print_json(&v);
    } else {
        print_info(&repo.location(), repo.meta());
        print_wal(&wal);
        println!(
            "backups:      {} complete of {}, {} stored",
            complete.len(),
            backups.len(),
            human_bytes(backups.iter().map(|m| m.stored_bytes).sum())
        );
        if let (Some(first), Some(last)) = (complete.first(), complete.last()) {
            println!("              oldest {}, newest {}", first.id, last.id);
            match &range.newest {
                Some(n) if n.gap => println!(
                    "recoverable:  from {} (end of backup {}) to {} only: {} is missing (see `dbbackup wal verify`)",
                    first.stop_time.as_deref().unwrap_or("-"),
                    first.id,
                    n.lsn.as_deref().unwrap_or("-"),
                    n.segment.as_deref().unwrap_or("-")
                ),
                _ => println!(
                    "recoverable:  from {} (end of backup {}) to {} (end of {}, archived {})",
                    first.stop_time.as_deref().unwrap_or("-"),
                    first.id,
                    wal.newest_segment_end_lsn.as_deref().unwrap_or("-"),
                    wal.newest_segment.as_deref().unwrap_or("-"),
                    wal.newest_segment_archived_at.as_deref().unwrap_or("-")
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info_json(location: &str, m: &RepoMeta) -> serde_json::Value {
    json!({
        "repository": location,
        "id": m.id,
        "format_version": m.format_version,
        "created_at": m.created_at,
        "created_by": m.created_by,
        "cluster": m.cluster.as_ref().map(|c| json!({
            "system_identifier": c.system_identifier.to_string(),
            "pg_version_major": c.pg_version_major,
            "wal_segment_size": c.wal_segment_size,
            "bound_at": c.bound_at,
            "bound_from": c.bound_from,
        })),
        "compression": { "algorithm": m.compression.algorithm, "level": m.compression.level },
        "encryption": m.encryption.as_ref().map(|e| json!({
            "algorithm": e.algorithm,
            "key_fingerprint": e.key_fingerprint,
        })),
    })
}

fn print_info(location: &str, m: &RepoMeta) {
    println!("repository:   {location}");
    if let Some(id) = &m.id {
        println!("id:           {id}");
    }
    println!("format:       {}", m.format_version);
    println!("created:      {} by {}", m.created_at, m.created_by);
    match &m.cluster {
        Some(c) => {
            println!("cluster:      system identifier {}", c.system_identifier);
            println!(
                "              PostgreSQL {}, WAL segment size {}",
                c.pg_version_major,
                human_bytes(c.wal_segment_size.into())
            );
            println!("              bound {} from {}", c.bound_at, c.bound_from);
        }
        None => println!("cluster:      not bound yet"),
    }
    let level = if matches!(m.compression.algorithm, Codec::Zstd | Codec::Gzip) {
        format!(" level {}", m.compression.level)
    } else {
        String::new()
    };
    println!("compression:  {}{level}", m.compression.algorithm);
    match &m.encryption {
        Some(e) => println!("encryption:   {}, key fingerprint {}", e.algorithm, e.key_fingerprint),
        None => println!("encryption:   none"),
    }
}

/// The WAL part of `repo info`, for people.
fn print_wal(w: &WalSummary) {
    println!(
        "wal:          {} segments, {} history, {} backup, {} partial files",
        w.segments, w.history_files, w.backup_files, w.partial_files
    );
    if w.objects > 0 {
        println!(
            "              {} stored for {} original{}",
            human_bytes(w.stored_bytes),
            human_bytes(w.original_bytes),
            w.compression_ratio.map(|r| format!(" (ratio {r:.2})")).unwrap_or_default()
        );
        let tls: Vec<String> = w.timelines.iter().map(u32::to_string).collect();
        println!("              timelines {}", tls.join(", "));
        println!(
            "              oldest {}, newest {}",
            w.oldest_segment.as_deref().unwrap_or("-"),
            w.newest_segment.as_deref().unwrap_or("-")
        );
    }
    if w.unknown_files > 0 {
        println!("              {} unknown files under wal/ (see `dbbackup wal verify`)", w.unknown_files);
    }
}
