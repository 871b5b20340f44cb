//! `dbbackup repo init` and `repo info`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use dbbackup_core::pg::server_identity;
use dbbackup_core::repo::{check_init_key_intent, identity_from_pgdata, identity_from_server, InitOptions, Repository};
use dbbackup_core::wal::catalog::Catalog;
use dbbackup_format::meta::{ClusterIdentity, RepoMeta};
use dbbackup_format::{Codec, WalKind};
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
    let oldest = complete
        .first()
        .map(|m| json!({"backup": m.id, "time": m.stop_time, "lsn": m.stop_lsn, "timeline": m.timeline}));
    // A gap after the newest complete backup's start ends what is
    // recoverable from the backups (restore refuses to go through it).
    let size = repo.segment_size();
    let newest_start =
        complete.last().and_then(|m| m.start_wal.as_deref()).and_then(|w| dbbackup_format::WalFileName::parse(w).ok());
    let gap_after = wal
        .gaps
        .iter()
        .filter_map(|g| {
            let first = dbbackup_format::WalFileName::parse(&g.first_missing).ok()?;
            let n = first.segment_no(size?)?;
            (n >= newest_start.as_ref()?.segment_no(size?)?).then_some((n, g))
        })
        .min_by_key(|(n, _)| *n)
        .map(|(_, g)| g.clone());
    let gap_start = gap_after.as_ref().and_then(|g| {
        dbbackup_format::WalFileName::parse(&g.first_missing).ok()?.start_lsn(size?).map(|l| l.to_string())
    });
    let backups_json = json!({
        "total": backups.len(),
        "complete": complete.len(),
        "newest": complete.last().map(|m| m.id.clone()),
        "oldest": complete.first().map(|m| m.id.clone()),
        "stored_bytes": backups.iter().map(|m| m.stored_bytes).sum::<u64>(),
        "oldest_recoverable_point": oldest,
        "newest_recoverable_point": (!complete.is_empty()).then(|| match &gap_after {
            Some(g) => json!({"segment": g.first_missing, "lsn": gap_start, "archived_at": null, "gap": true}),
            None => json!({
                "segment": wal.newest_segment,
                "lsn": wal.newest_segment_end_lsn,
                "archived_at": wal.newest_segment_archived_at,
            }),
        }),
    });
    if ctx.g.json {
        let mut v = info_json(&repo.location(), repo.meta());
        v["wal"] = serde_json::to_value(&wal)?;
        v["backups"] = backups_json;
        print_json(&v);
    } else {
        print_info(&repo.location(), repo.meta());
        wal.print();
        println!(
            "backups:      {} complete of {}, {} stored",
            complete.len(),
            backups.len(),
            human_bytes(backups.iter().map(|m| m.stored_bytes).sum())
        );
        if let (Some(first), Some(last)) = (complete.first(), complete.last()) {
            println!("              oldest {}, newest {}", first.id, last.id);
            match &gap_after {
                Some(g) => println!(
                    "recoverable:  from {} (end of backup {}) to {} only: {} is missing (see `dbbackup wal verify`)",
                    first.stop_time.as_deref().unwrap_or("-"),
                    first.id,
                    gap_start.as_deref().unwrap_or("-"),
                    g.first_missing
                ),
                None => println!(
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

/// What `repo info` says about archived WAL (from names only).
#[derive(Debug, serde::Serialize)]
struct WalSummary {
    objects: usize,
    segments: usize,
    history_files: usize,
    backup_files: usize,
    partial_files: usize,
    original_bytes: u64,
    stored_bytes: u64,
    compression_ratio: Option<f64>,
    timelines: Vec<u32>,
    oldest_segment: Option<String>,
    newest_segment: Option<String>,
    /// Where the newest archived segment ends, and when it was archived:
    /// the newest point a restore to the end of the archive reaches.
    newest_segment_end_lsn: Option<String>,
    newest_segment_archived_at: Option<String>,
    /// Runs of missing segments (as `wal verify` finds them, from names).
    gaps: Vec<dbbackup_core::wal::catalog::Gap>,
    unknown_files: usize,
}

impl WalSummary {
    fn of(repo: &Repository) -> Result<WalSummary> {
        let cat = Catalog::scan(repo)?;
        let seg = repo.segment_size().map(|s| u64::from(s.bytes())).unwrap_or(0);
        let count = |k: WalKind| cat.iter_kind(k).count();
        let (segments, partials) = (count(WalKind::Segment), count(WalKind::Partial));
        // Segment-sized objects have a known original size; the small
        // history and backup files are counted at their stored size.
        let original_bytes = (segments + partials) as u64 * seg
            + cat
                .objects
                .iter()
                .filter(|o| matches!(o.wal.kind(), WalKind::History | WalKind::Backup))
                .map(|o| o.stored.stored_size)
                .sum::<u64>();
        let stored_bytes = cat.objects.iter().map(|o| o.stored.stored_size).sum();
        let mut timelines: Vec<u32> = cat.objects.iter().map(|o| o.wal.timeline().0).collect();
        timelines.sort_unstable();
        timelines.dedup();
        let oldest_segment = cat.iter_kind(WalKind::Segment).next().map(|o| o.wal.to_string());
        let summary = WalSummary {
            objects: cat.objects.len(),
            segments,
            history_files: count(WalKind::History),
            backup_files: count(WalKind::Backup),
            partial_files: partials,
            original_bytes,
            stored_bytes,
            compression_ratio: (stored_bytes > 0)
                .then(|| (original_bytes as f64 / stored_bytes as f64 * 100.0).round() / 100.0),
            timelines,
            oldest_segment,
            newest_segment: cat.newest_segment().map(|o| o.wal.to_string()),
            newest_segment_end_lsn: cat
                .newest_segment()
                .zip(repo.segment_size())
                .and_then(|(o, size)| o.wal.segment_no(size).map(|n| size.segment_start(n + 1).to_string())),
            newest_segment_archived_at: cat
                .newest_segment()
                .and_then(|o| o.archived_at)
                .and_then(|t| jiff::Timestamp::try_from(t).ok())
                .map(|t| t.to_string()),
            gaps: match repo.segment_size() {
                Some(size) => {
                    // Unreadable history files (encrypted, no key): gaps
                    // between archived segments are still found.
                    let hist = dbbackup_core::wal::catalog::timelines(repo, &cat).map(|(_, h)| h).unwrap_or_default();
                    dbbackup_core::wal::catalog::gaps(&cat, &hist, size)
                }
                None => Vec::new(),
            },
            unknown_files: cat.strays.len(),
        };
        Ok(summary)
    }

    fn print(&self) {
        println!(
            "wal:          {} segments, {} history, {} backup, {} partial files",
            self.segments, self.history_files, self.backup_files, self.partial_files
        );
        if self.objects > 0 {
            println!(
                "              {} stored for {} original{}",
                human_bytes(self.stored_bytes),
                human_bytes(self.original_bytes),
                self.compression_ratio.map(|r| format!(" (ratio {r:.2})")).unwrap_or_default()
            );
            let tls: Vec<String> = self.timelines.iter().map(u32::to_string).collect();
            println!("              timelines {}", tls.join(", "));
            println!(
                "              oldest {}, newest {}",
                self.oldest_segment.as_deref().unwrap_or("-"),
                self.newest_segment.as_deref().unwrap_or("-")
            );
        }
        if self.unknown_files > 0 {
            println!("              {} unknown files under wal/ (see `dbbackup wal verify`)", self.unknown_files);
        }
    }
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
