//! The whole `restore pitr` sequence, in order: plan and check (nothing is
//! written yet), the port an `--auto-start` server will take, unpack,
//! recovery settings, start, follow recovery to its end. The CLI turns
//! flags into [`RestoreOptions`] and renders what [`run`] returns.

use std::path::PathBuf;

use dbbackup_format::recovery::Target;
use dbbackup_format::TimelineId;

use super::{
    archive_end, configured_socket, extract, find_pg_ctl, label_timeline, monitor, plan, planned_socket, port_in_use,
    start, write_recovery, RecoveryOutcome, RestoreOptions, Source, TimelineChoice,
};
use crate::error::{Error, Result};
use crate::repo::Repository;

/// What happens after the files are in place.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Start the restored server (pg_ctl).
    pub auto_start: bool,
    /// Follow recovery until it ends (needs `auto_start`).
    pub monitor: bool,
}

/// The backup and archive range a restore used.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanSummary {
    pub source: String,
    pub target_timeline: u32,
    pub first_segment: String,
    pub last_segment: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub target_dir: PathBuf,
    /// The target recovery is configured for (the end of the archive when
    /// `--target-past-end` overrode one past it).
    pub target: Target,
    /// `None` with `--skip-extraction`.
    pub plan: Option<PlanSummary>,
    pub server_log: Option<PathBuf>,
    pub recovery: Option<RecoveryOutcome>,
}

impl Restored {
    /// Why a followed recovery did not reach its target, with what to do
    /// (PostgreSQL's words first); `None` when it did or was not followed.
    pub fn failure(&self) -> Option<String> {
        let o = self.recovery.as_ref().filter(|o| o.state == "failed" || !o.target_reached)?;
        let detail = o.detail.as_deref().unwrap_or("");
        let hint = if detail.contains("before consistent recovery point") {
            "; the target lies before the end of the backup restored: choose an older one with --base-backup ID (see `dbbackup backup list`)"
        } else if detail.contains("ended before configured recovery target was reached") {
            match self.target {
                Target::Time(_) => "; no transaction in the archive committed after the target time, so PostgreSQL cannot tell it got there: if nothing was written between the last commit and that time, the end of the archive is the state you want (restore again without a target), else archive the source's current WAL first (SELECT pg_switch_wal())",
                _ => "; the target is not in the archive after the backup: check it; a restore point or transaction from before the backup restored is never seen (choose an older one with --base-backup ID, see `dbbackup backup list`); or archive the source's current WAL first (SELECT pg_switch_wal())",
            }
        } else {
            ""
        };
        Some(format!(
            "recovery did not reach {}{}{hint}: see {}",
            self.target,
            o.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
            self.server_log.as_ref().map(|l| l.display().to_string()).unwrap_or_default()
        ))
    }
}

/// Restores `opts.target_dir` from `repo` and, as `how` says, starts the
/// server and follows recovery. `say` receives the progress lines a user
/// reads (what is restored from where, where the server log is).
pub fn run(repo: &Repository, mut opts: RestoreOptions, how: StartOptions, say: &dyn Fn(&str)) -> Result<Restored> {
    let target_dir = opts.target_dir.clone();
    // pg_ctl hands the data directory to a shell in double quotes.
    if let Some(c) = how
        .auto_start
        .then(|| target_dir.to_string_lossy().chars().find(|c| matches!(c, '"' | '$' | '`' | '\\')))
        .flatten()
    {
        return Err(Error::invalid(format!(
            "pg_ctl cannot start a server in {} (its path holds {c:?}): restore into another directory, or leave out --auto-start and start it yourself",
            target_dir.display()
        )));
    }
    let mut end = None;
    let (major, bindir_hint, summary) = if opts.skip_extraction {
        let v = std::fs::read_to_string(target_dir.join("PG_VERSION")).map_err(|e| {
            Error::invalid(format!("{} is not a data directory (no PG_VERSION: {e})", target_dir.display()))
        })?;
        let major = dbbackup_format::control::parse_pg_version(&v)
            .ok_or_else(|| Error::invalid(format!("{}: unreadable PG_VERSION", target_dir.display())))?;
        if matches!(opts.target, Target::End) {
            let tli = label_timeline(&target_dir).unwrap_or(TimelineId(1));
            end = archive_end(repo, opts.timeline.unwrap_or(TimelineChoice::Latest), tli)?;
        }
        let timeline = match opts.timeline {
            Some(TimelineChoice::Id(n)) => Some(TimelineId(n)),
            _ => None,
        };
        opts.add_prefetch(repo.segment_size(), timeline);
        (major, None, None)
    } else {
        let plan = plan(repo, &opts)?;
        opts.target = plan.target.clone();
        opts.add_prefetch(repo.segment_size(), Some(plan.target_timeline));
        end = plan.archive_end;
        say(&format!(
            "restoring {} to {} on timeline {}: the archive covers {} to {} ({} segments)",
            plan.source_name(),
            opts.target,
            plan.target_timeline,
            plan.first_segment,
            plan.last_segment.as_deref().unwrap_or("-"),
            plan.segments_checked
        ));
        let hint = match &plan.source {
            Source::Repo(m) => m.pg_bindir.clone(),
            Source::Path { .. } => None,
        };
        // The port the restored server will listen on, checked before
        // anything is written (the backup's own configuration says where).
        if how.auto_start {
            let (sockets, conf_port) = planned_socket(repo, &plan)?;
            let port = opts.port.unwrap_or(conf_port);
            if port_in_use(port, &sockets) {
                return Err(Error::invalid(format!(
                    "port {port} is in use{}: {} (nothing was restored)",
                    if opts.port.is_none() { " (by the server this backup came from?)" } else { "" },
                    if opts.port.is_none() {
                        "give --port P to start the restored server on another port"
                    } else {
                        "choose another with --port P"
                    }
                )));
            }
        }
        extract(repo, &plan, &opts)?;
        let summary = PlanSummary {
            source: plan.source_name(),
            target_timeline: plan.target_timeline.0,
            first_segment: plan.first_segment.clone(),
            last_segment: plan.last_segment.clone(),
        };
        (plan.major, hint, Some(summary))
    };
    write_recovery(&target_dir, major, &opts)?;
    if opts.skip_extraction {
        say(&format!("recovery configured in {} ({})", target_dir.display(), opts.target));
    } else {
        say(&format!("restored into {}; recovery configured ({})", target_dir.display(), opts.target));
    }
    if opts.archive_off {
        say("archive_mode = off in the restored cluster: an inspection copy, it never archives into the repository (--archive-mode preserve keeps archiving, for a restore that becomes the new primary)");
    } else {
        say(&format!(
            "--archive-mode preserve: once promoted, the restored cluster archives its new timeline into the archive_command's repository ({}) as the new primary; if this is only a copy, stop it from archiving there (ALTER SYSTEM SET archive_mode = off, restart), or later restores of the primary's history need --timeline",
            repo.location()
        ));
    }
    let mut done = Restored {
        target_dir: target_dir.clone(),
        target: opts.target.clone(),
        plan: summary,
        server_log: None,
        recovery: None,
    };
    if !how.auto_start {
        return Ok(done);
    }
    let (sockets, conf_port) = configured_socket(&target_dir);
    let port = opts.port.unwrap_or(conf_port);
    if port_in_use(port, &sockets) {
        return Err(Error::invalid(format!(
            "port {port} is in use (by the server this backup came from?): the files are restored in {dir} and recovery is configured; start it on another port with `dbbackup restore pitr --skip-extraction --target-dir {dir} --auto-start --port P` (with the same target options)",
            dir = target_dir.display()
        )));
    }
    let pg_ctl = find_pg_ctl(major, bindir_hint.as_deref())?;
    let log = start(&pg_ctl, &target_dir)?;
    say(&format!(
        "started PostgreSQL {major} in {} on port {port}; server log {}",
        target_dir.display(),
        log.display()
    ));
    if how.monitor {
        let o = monitor(&target_dir, &log, &opts.target, end, None)?;
        // Only what is known: a server that failed early answers nothing.
        let mut facts = Vec::new();
        if let Some(t) = o.timeline {
            facts.push(format!("timeline {t}"));
        }
        if let Some(l) = &o.lsn {
            facts.push(format!("LSN {l}"));
        }
        if let Some(t) = &o.time {
            facts.push(format!("last replayed transaction at {t}"));
        }
        let facts = if facts.is_empty() { String::new() } else { format!(": {}", facts.join(", ")) };
        say(&format!(
            "recovery {}{facts}; target {}",
            o.state,
            if o.target_reached { "reached" } else { "NOT reached" }
        ));
        if let Some(d) = &o.detail {
            say(&format!("  {d}"));
        }
        // Recovery is over: nothing will ask for a prefetched segment again.
        // (Paused at the target, it may go on; failed, the worker's notes
        // help and it empties the spool itself.)
        if matches!(o.state.as_str(), "promoted" | "shut down") && opts.prefetch_depth(repo.segment_size()) > 0 {
            let spool = opts.spool();
            match crate::wal::prefetch::remove_part(&spool) {
                Ok(true) => {
                    say(&format!("removed the prefetch spool {}", spool.join(crate::wal::prefetch::PART).display()))
                }
                Ok(false) => {}
                Err(e) => say(&format!("warning: {e}")),
            }
        }
        done.recovery = Some(o);
    }
    done.server_log = Some(log);
    Ok(done)
}
