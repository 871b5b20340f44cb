//! The repository: its metadata file, the cluster identity it is bound
//! to, its codec defaults and its encryption key.
//!
//! A `Repository` value exists only after the metadata was read, its format
//! version accepted and, for an encrypted repository, a key with the
//! recorded fingerprint loaded. Code holding one never has to re-check.

use std::io::Write;
use std::sync::Arc;

use dbbackup_format::control::{parse_control, parse_pg_version};
use dbbackup_format::key::Key;
use dbbackup_format::meta::{
    ClusterIdentity, Compression, Encryption, MetaError, RepoMeta, CREATE_FORMAT_VERSION, META_FILE,
};
use dbbackup_format::{Codec, SegmentSize};

use crate::codec::CodecSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::KeySource;
use crate::storage::{Commit, Storage};

/// Lock file serializing metadata writes.
pub const META_LOCK: &str = "locks/meta.lock";

/// An opened repository.
#[derive(Debug)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    meta: RepoMeta,
    key: Option<Key>,
}

/// What `repo init` creates.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub codec: Codec,
    pub level: Option<i32>,
    /// Encrypt every object with this key.
    pub key: Option<Key>,
    pub identity: Option<ClusterIdentity>,
}

/// Current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

/// Checks a compression level against the codec's range.
pub fn check_level(codec: Codec, level: Option<i32>) -> Result<()> {
    match (level, codec.level_range()) {
        (Some(l), Some((lo, hi))) if !(lo..=hi).contains(&l) => {
            Err(Error::invalid(format!("compression level {l} is out of range for {codec}: use {lo} to {hi}")))
        }
        (Some(_), None) if codec != Codec::None => {
            Err(Error::invalid(format!("{codec} has no compression levels: drop --compress-level")))
        }
        _ => Ok(()),
    }
}

/// Refuses to create an unencrypted repository at `location` when the user
/// gave a key (a key file, or --encryption-key-env) but not --encrypt.
pub fn check_init_key_intent(keys: &KeySource, encrypt: bool, location: &str) -> Result<()> {
    if encrypt || !keys.explicit() {
        return Ok(());
    }
    Err(Error::key(format!(
        "an encryption key was given ({}) but not --encrypt: repository {location} would be created unencrypted; \
         add --encrypt to create it encrypted, or leave out the key",
        keys.given_as()
    )))
}

/// What a writer that creates a missing repository asks for (`wal
/// archive`, `backup base`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub codec: Option<Codec>,
    pub level: Option<i32>,
    /// `--encrypt`: the repository must be (or be created) encrypted.
    pub encrypt: bool,
    /// What would be stored ("WAL", "the backup"), for messages.
    pub what: &'static str,
    /// Evidence that this cluster archived before (a `.done` file in
    /// `pg_wal/archive_status`): then a missing local repository whose place
    /// is an empty directory is not created (an unmounted file system).
    pub archived_before: Option<String>,
}

/// Opens the repository, or creates a missing one with the writer's
/// options; the encryption rules (a key implies intent, `--encrypt` needs
/// a key and an encrypted repository) hold either way. Concurrent creators
/// agree on one repository.
pub fn open_or_create(storage: Arc<dyn Storage>, keys: &KeySource, o: &CreateOptions) -> Result<Repository> {
    let loc = storage.location();
    let checked = |repo: Repository| -> Result<Repository> {
        if o.encrypt && repo.key().is_none() {
            return Err(Error::invalid(format!(
                "--encrypt was given but repository {loc} is not encrypted: encryption is chosen when the repository is created (`dbbackup repo init --encrypt`)"
            )));
        }
        repo.check_key_intent(keys, o.what)?;
        Ok(repo)
    };
    let first = match Repository::open(Arc::clone(&storage), keys) {
        Ok(repo) => return checked(repo),
        Err(e) if e.kind() == ErrorKind::NotFound => e,
        Err(e) => return Err(e),
    };
    if !Repository::can_init(storage.as_ref()) {
        // Another writer may have created it since the first look.
        return match Repository::open(storage, keys) {
            Ok(repo) => checked(repo),
            Err(_) => Err(first),
        };
    }
    // A repository path that is an empty directory or sits in one, for a
    // cluster that has archived before: a file system that is not mounted.
    // A new repository there would split the archive.
    let path = std::path::Path::new(&loc);
    let empty_dir = |d: &std::path::Path| std::fs::read_dir(d).is_ok_and(|mut r| r.next().is_none());
    let bare = path.is_absolute() && (path.is_dir() || path.parent().is_some_and(empty_dir));
    if let Some(done) = o.archived_before.as_ref().filter(|_| bare) {
        return Err(Error::invalid(format!(
            "repository {loc} does not exist and its place is an empty directory, but this cluster has archived WAL before ({done}): refusing to create a new one there (is its file system unmounted?); to start a new repository there on purpose, create it first with `dbbackup repo init --repo {loc}`"
        )));
    }
    check_init_key_intent(keys, o.encrypt, &loc)?;
    let key = keys.load()?;
    if o.encrypt && key.is_none() {
        return Err(Error::key(format!("--encrypt needs a key: {}", keys.hint())));
    }
    let codec = o.codec.unwrap_or_default();
    check_level(codec, o.level)?;
    let init = InitOptions { codec, level: o.level, key: if o.encrypt { key } else { None }, identity: None };
    match Repository::init(Arc::clone(&storage), init) {
        Ok(r) => {
            tracing::info!("created repository {loc}");
            Ok(r)
        }
        // Another writer created it first.
        Err(e) if e.kind() == ErrorKind::Conflict => checked(Repository::open(storage, keys)?),
        Err(e) => Err(e),
    }
}

impl Repository {
    /// Creates a new repository. Refuses an existing repository and a
    /// directory holding anything else.
    pub fn init(storage: Arc<dyn Storage>, opts: InitOptions) -> Result<Repository> {
        let loc = storage.location();
        check_level(opts.codec, opts.level)?;
        if storage.root_exists().map_err(|e| Error::io(format!("cannot use repository path {loc}: {e}")))? {
            let entries = storage.list("").map_err(|e| Error::io(format!("cannot read repository path {loc}: {e}")))?;
            if entries.iter().any(|e| e.name == META_FILE) {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "repository {loc} already exists: nothing was changed (see it with `dbbackup repo info {}`)",
                        if loc.contains("://") { "--config FILE".to_string() } else { format!("--repo {loc}") }
                    ),
                ));
            }
            // A mount point's lost+found does not make a directory used.
            let entries: Vec<_> = entries.into_iter().filter(|e| e.name != "lost+found").collect();
            if !entries.is_empty() {
                return Err(Error::invalid(format!(
                    "{loc} is not empty and is not a dbbackup repository (found {}): choose a new or empty directory",
                    entries.iter().take(3).map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| Error::io(format!("cannot make a repository ID: {e}")))?;
        let meta = RepoMeta {
            format_version: CREATE_FORMAT_VERSION,
            id: Some(hex::encode(id)),
            created_at: now_rfc3339(),
            created_by: format!("dbbackup {}", env!("CARGO_PKG_VERSION")),
            cluster: opts.identity,
            compression: Compression { algorithm: opts.codec, level: opts.level.unwrap_or(opts.codec.default_level()) },
            encryption: opts
                .key
                .as_ref()
                .map(|k| Encryption { algorithm: "aes-256-gcm".into(), key_fingerprint: k.fingerprint() }),
        };
        let mut w = storage
            .create(META_FILE, Commit::NoReplace)
            .map_err(|e| Error::io(format!("cannot create repository {loc}: {e}")))?;
        w.write_all(meta.to_json().as_bytes())
            .map_err(|e| Error::io(format!("cannot write {loc}/{META_FILE}: {e}")))?;
        w.commit().map_err(|e| match e {
            crate::storage::StorageError::AlreadyExists { .. } => {
                Error::new(ErrorKind::Conflict, format!("repository {loc} already exists: nothing was changed"))
            }
            e => Error::io(format!("cannot create repository {loc}: {e}")),
        })?;
        Ok(Repository { storage, meta, key: opts.key })
    }

    /// Whether `init` may create a repository here: the path is absent, or
    /// an empty directory (temporary files of another process creating one
    /// at this moment, and a mount point's lost+found, do not count).
    pub fn can_init(storage: &dyn Storage) -> bool {
        match storage.root_exists() {
            Ok(false) => true,
            Ok(true) => storage.list("").is_ok_and(|l| l.iter().all(|e| e.name == "lost+found")),
            Err(_) => false,
        }
    }

    /// Reads the metadata without asking for a key (for `repo info`).
    ///
    /// A missing repository is never answered with advice to create one:
    /// the usual cause is an unmounted file system or a mistyped `--repo`,
    /// and an empty repository created in its place would make a recovering
    /// server read "no more WAL" and promote early, at the wrong point.
    pub fn read_meta(storage: &dyn Storage) -> Result<RepoMeta> {
        let loc = storage.location();
        let bytes = match storage.read_all(META_FILE) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                let exists = match storage.root_exists() {
                    Ok(b) => b,
                    // A missing bucket, said as such (the store's answer).
                    Err(e) if loc.contains("://") => {
                        return Err(Error::not_found(format!("repository {loc} does not exist: {e}")))
                    }
                    Err(_) => false,
                };
                // An object store has no mounts: the name or settings are wrong.
                if loc.contains("://") {
                    return Err(Error::not_found(format!(
                        "repository {loc} does not exist (no {META_FILE} under that prefix): check the bucket and prefix in --repo or the config file's `repo`, and the endpoint in its store table"
                    )));
                }
                return Err(Error::not_found(if exists {
                    format!(
                        "{loc} is not a dbbackup repository (no {META_FILE}): check that --repo is right and that the repository's file system is mounted there"
                    )
                } else {
                    format!(
                        "repository {loc} does not exist: check that --repo is right and that the repository's file system is mounted"
                    )
                }));
            }
            Err(e) => return Err(Error::io(format!("cannot read repository {loc}: {e}"))),
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::integrity(format!("repository metadata {loc}/{META_FILE} is not UTF-8 text")))?;
        RepoMeta::parse(&text).map_err(|e| match e {
            MetaError::NewerFormat { .. } => Error::identity(format!("repository {loc}: {e}; nothing was touched")),
            MetaError::Invalid(_) => Error::integrity(format!("repository metadata {loc}/{META_FILE}: {e}")),
        })
    }

    /// Opens an existing repository, loading and checking the key when it
    /// is encrypted.
    pub fn open(storage: Arc<dyn Storage>, keys: &KeySource) -> Result<Repository> {
        let meta = Self::read_meta(storage.as_ref())?;
        // The default variable is not read for an unencrypted repository: a
        // stray (even malformed) one in the server's environment must not
        // stop archiving. A key the user named is still checked.
        let given = if meta.encryption.is_none() && !keys.explicit() { None } else { keys.load()? };
        let key = match (&meta.encryption, given) {
            (None, _) => None,
            (Some(enc), None) => {
                return Err(Error::key(format!(
                    "repository {} is encrypted (key fingerprint {}) and no key was given: {}",
                    storage.location(),
                    enc.key_fingerprint,
                    keys.hint()
                )))
            }
            (Some(enc), Some(k)) => {
                if k.fingerprint() != enc.key_fingerprint {
                    return Err(Error::key(format!(
                        "wrong encryption key for repository {}: the key given has fingerprint {}, the repository's has fingerprint {}",
                        storage.location(),
                        k.fingerprint(),
                        enc.key_fingerprint
                    )));
                }
                Some(k)
            }
        };
        Ok(Repository { storage, meta, key })
    }

    /// Refuses to store into an unencrypted repository when the user gave a
    /// key (a key file, or --encryption-key-env): the key says they expect
    /// encryption, and `what` would silently be stored in the clear. Every
    /// command that writes into a repository calls this; readers do not (a
    /// key is harmless there).
    pub fn check_key_intent(&self, keys: &KeySource, what: &str) -> Result<()> {
        if self.meta.encryption.is_some() || !keys.explicit() {
            return Ok(());
        }
        Err(Error::key(format!(
            "repository {} is not encrypted, but an encryption key was given ({}): {what} would be stored unencrypted; \
             leave out the key, or create an encrypted repository with `dbbackup repo init --encrypt`",
            self.location(),
            keys.given_as()
        )))
    }

    /// Opens a repository for reading names and sizes only: no key is
    /// loaded, so decoding an encrypted object fails with a key error.
    pub fn open_for_listing(storage: Arc<dyn Storage>) -> Result<Repository> {
        let meta = Self::read_meta(storage.as_ref())?;
        Ok(Repository { storage, meta, key: None })
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn location(&self) -> String {
        self.storage.location()
    }

    pub fn meta(&self) -> &RepoMeta {
        &self.meta
    }

    /// The key, present exactly when the repository is encrypted.
    pub fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    pub fn identity(&self) -> Option<&ClusterIdentity> {
        self.meta.cluster.as_ref()
    }

    pub fn segment_size(&self) -> Option<SegmentSize> {
        self.identity().and_then(|c| SegmentSize::new(c.wal_segment_size))
    }

    /// What `--compress[=ALG]` and `--compress-level N` ask of one write:
    /// `None` for the repository's default; a codec without a level takes
    /// that codec's default level, a level alone the repository's codec.
    pub fn codec_choice(&self, codec: Option<Codec>, level: Option<i32>) -> Result<Option<CodecSettings>> {
        if codec.is_none() && level.is_none() {
            return Ok(None);
        }
        let codec = codec.unwrap_or(self.meta.compression.algorithm);
        check_level(codec, level)?;
        Ok(Some(CodecSettings::new(codec, level)))
    }

    /// The repository's default codec settings.
    pub fn codec_settings(&self) -> CodecSettings {
        CodecSettings::new(self.meta.compression.algorithm, Some(self.meta.compression.level))
    }

    /// Checks that `found` is the cluster this repository belongs to.
    pub fn check_identity(&self, found: &ClusterIdentity, what: &str) -> Result<()> {
        if let Some(own) = self.identity() {
            check_same_cluster(&self.location(), own, found, what)?;
        }
        Ok(())
    }

    /// Raises the repository's format version to at least `version` (before
    /// writing what older builds must not misread); a no-op when it is there.
    pub fn require_format(&mut self, version: u32) -> Result<()> {
        if self.meta.format_version >= version {
            return Ok(());
        }
        let loc = self.location();
        let _lock =
            self.storage.lock(META_LOCK).map_err(|e| Error::io(format!("cannot lock repository {loc}: {e}")))?;
        let mut meta = Self::read_meta(self.storage.as_ref())?;
        if meta.format_version < version {
            meta.format_version = version;
            self.write_meta(&meta)?;
        }
        self.meta = meta;
        Ok(())
    }

    fn write_meta(&self, meta: &RepoMeta) -> Result<()> {
        let loc = self.location();
        let mut w = self
            .storage
            .create(META_FILE, Commit::Replace)
            .map_err(|e| Error::io(format!("cannot write repository {loc}: {e}")))?;
        w.write_all(meta.to_json().as_bytes())
            .map_err(|e| Error::io(format!("cannot write {loc}/{META_FILE}: {e}")))?;
        w.commit().map_err(|e| Error::io(format!("cannot write {loc}/{META_FILE}: {e}")))
    }

    /// Binds an unbound repository to `identity`; a bound one must match.
    pub fn bind(&mut self, identity: ClusterIdentity) -> Result<()> {
        let loc = self.location();
        let _lock =
            self.storage.lock(META_LOCK).map_err(|e| Error::io(format!("cannot lock repository {loc}: {e}")))?;
        // Another process may have bound it since we read the metadata.
        let mut meta = Self::read_meta(self.storage.as_ref())?;
        if let Some(own) = &meta.cluster {
            check_same_cluster(&loc, own, &identity, &identity.bound_from)?;
            self.meta = meta;
            return Ok(());
        }
        meta.cluster = Some(identity);
        self.write_meta(&meta)?;
        self.meta = meta;
        Ok(())
    }
}

fn check_same_cluster(loc: &str, own: &ClusterIdentity, found: &ClusterIdentity, what: &str) -> Result<()> {
    if own.system_identifier != found.system_identifier {
        return Err(Error::identity(format!(
            "repository {loc} belongs to another cluster: {what} has system identifier {}, the repository's cluster has system identifier {}; give each cluster its own repository (another directory, or another prefix in the bucket), or check --repo / the config file",
            found.system_identifier, own.system_identifier
        )));
    }
    if own.pg_version_major != found.pg_version_major {
        return Err(Error::identity(format!(
            "{what} is PostgreSQL {}, but repository {loc} holds PostgreSQL {} (system identifier {}): use a new repository after a major upgrade",
            found.pg_version_major, own.pg_version_major, own.system_identifier
        )));
    }
    if own.wal_segment_size != found.wal_segment_size {
        return Err(Error::identity(format!(
            "{what} has WAL segment size {} bytes, but repository {loc} holds {} byte segments: each cluster needs its own repository",
            found.wal_segment_size, own.wal_segment_size
        )));
    }
    Ok(())
}

/// Reads a data directory's identity from `global/pg_control` and `PG_VERSION`.
pub fn identity_from_pgdata(pgdata: &std::path::Path) -> Result<ClusterIdentity> {
    let control_path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&control_path).map_err(|e| {
        Error::invalid(format!(
            "cannot read {}: {e} (is {} a PostgreSQL data directory?)",
            control_path.display(),
            pgdata.display()
        ))
    })?;
    let control = parse_control(&bytes).map_err(|e| Error::integrity(format!("{}: {e}", control_path.display())))?;
    let version = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|t| parse_pg_version(&t))
        .or_else(|| control.major_version())
        .ok_or_else(|| Error::invalid(format!("cannot tell the PostgreSQL version of {}", pgdata.display())))?;
    Ok(ClusterIdentity {
        system_identifier: control.system_identifier,
        pg_version_major: version,
        wal_segment_size: control.wal_segment_size,
        bound_at: now_rfc3339(),
        bound_from: "pg_control".into(),
    })
}

/// A server's identity as the repository records it.
pub fn identity_from_server(id: crate::pg::ServerIdentity) -> ClusterIdentity {
    ClusterIdentity {
        system_identifier: id.system_identifier,
        pg_version_major: id.major_version,
        wal_segment_size: id.wal_segment_size,
        bound_at: now_rfc3339(),
        bound_from: "server".into(),
    }
}
