//! `wal verify`: decode and check every object, in parallel, and find gaps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use dbbackup_format::SegmentSize;

use crate::error::Result;
use crate::repo::Repository;
use crate::wal::catalog::{gaps, timelines, Catalog, Gap};
use crate::wal::decode_verified;

/// One object that failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub error: String,
}

/// What `wal verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub objects: usize,
    pub verified: usize,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub problems: Vec<Problem>,
    pub gaps: Vec<Gap>,
    /// Files that are not WAL objects.
    pub unknown: Vec<String>,
    /// History files that could not be read: gap detection on their
    /// timelines ignores switch points.
    pub history_errors: Vec<Problem>,
    /// Complete backups whose WAL (start to stop) is not all archived.
    pub backups_missing_wal: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
            && self.gaps.is_empty()
            && self.unknown.is_empty()
            && self.history_errors.is_empty()
            && self.backups_missing_wal.is_empty()
    }
}

/// Verifies every object with `jobs` threads.
pub fn verify(repo: &Repository, cat: &Catalog, jobs: usize) -> Result<VerifyReport> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new((0usize, 0u64, Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(obj) = cat.objects.get(i) else { break };
                let r = decode_verified(repo, &obj.stored, &mut std::io::sink());
                let mut g = results.lock().expect("no panics while locked");
                match r {
                    Ok(n) => {
                        g.0 += 1;
                        g.1 += n;
                    }
                    Err(e) => g.2.push(Problem { path: obj.stored.path.clone(), error: e.to_string() }),
                }
            });
        }
    });
    let (verified, original_bytes, mut problems) = results.into_inner().expect("threads joined");
    // One WAL name archived twice with different content: `wal fetch`
    // refuses to choose (exit 128), so recovery stops there.
    let mut by_name: std::collections::BTreeMap<String, Vec<&crate::wal::catalog::WalObject>> = Default::default();
    for o in &cat.objects {
        by_name.entry(o.wal.to_string()).or_default().push(o);
    }
    for (name, objs) in by_name.iter().filter(|(_, v)| v.len() > 1) {
        if objs.iter().any(|o| o.stored.object.checksum != objs[0].stored.object.checksum) {
            problems.push(Problem {
                path: objs[1].stored.path.clone(),
                error: format!(
                    "{name} is archived twice with different content ({} and {}): `wal fetch` refuses it, so recovery stops there; find which cluster archived the second copy (two clusters archiving into one repository?), keep the right one and remove the other",
                    objs[0].stored.path,
                    objs[1].stored.path
                ),
            });
        }
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path));

    // Gaps need the history files; a corrupt one is reported, not fatal.
    let mut history_errors = Vec::new();
    let histories = match timelines(repo, cat) {
        Ok((_, h)) => h,
        Err(e) => {
            history_errors.push(Problem { path: "wal/history".into(), error: e.to_string() });
            Default::default()
        }
    };
    // A child timeline whose history file is missing cannot be followed
    // from its parent's WAL. (A repository whose archiving began on a later
    // timeline holds no older timeline and needs no history file.)
    let lowest = cat.objects.iter().map(|o| o.wal.timeline()).min();
    let mut missing: Vec<_> = cat
        .objects
        .iter()
        .map(|o| o.wal.timeline())
        .filter(|t| Some(*t) != lowest && !histories.contains_key(t))
        .collect();
    missing.dedup();
    if history_errors.is_empty() {
        for t in missing {
            let name = dbbackup_format::WalFileName::history(t);
            history_errors.push(Problem {
                path: format!("wal/history/{name}"),
                error: format!(
                    "timeline {t} has archived WAL but its history file {name} is missing: recovery cannot follow the switch to it (archive it from the server's pg_wal with `dbbackup wal archive`)"
                ),
            });
        }
    }
    let size = repo.segment_size().unwrap_or(SegmentSize::DEFAULT);
    // Every complete backup needs its WAL from start to stop (names only;
    // the objects themselves were just verified above).
    let present: std::collections::HashSet<String> = cat.objects.iter().map(|o| o.wal.to_string()).collect();
    let mut backups_missing_wal = Vec::new();
    let (backups, _) = crate::backup::list(repo)?;
    for m in backups.iter().filter(|m| m.status == dbbackup_format::manifest::BackupStatus::Complete) {
        let needed = crate::backup::verify::needed_wal(m)?;
        if let Some(w) = needed.iter().find(|w| !present.contains(&w.to_string())) {
            backups_missing_wal.push(Problem {
                path: crate::backup::backup_dir(&m.id),
                error: format!("backup {} needs {w}, which is not archived: the backup cannot be restored", m.id),
            });
        }
    }
    Ok(VerifyReport {
        objects: cat.objects.len(),
        verified,
        original_bytes,
        stored_bytes: cat.objects.iter().map(|o| o.stored.stored_size).sum(),
        problems,
        gaps: gaps(cat, &histories, size),
        unknown: cat.strays.clone(),
        history_errors,
        backups_missing_wal,
    })
}
