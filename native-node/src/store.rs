//! The crash-safe store: append-only record logs (DESIGN §5).
//!
//! A [`RecordLog`] is one file of records, each `len (u32 LE) ‖ CRC32C of
//! the payload (u32 LE) ‖ payload`. An append is written and `fdatasync`ed
//! before it is acknowledged. On open:
//! - a record cut short at the end of the file, or a last record whose
//!   checksum fails, is a **torn tail** (a write the crash interrupted,
//!   never acknowledged): it is truncated away and reported;
//! - a checksum failure with more records after it is **damage**: the log
//!   refuses to open and says where. Nothing is silently skipped.
//!
//! After any failed write or sync the log is **poisoned**: it refuses
//! further writes (the file's state is unknown until it is reopened).
//!
//! [`Store`] lays the logs out in a data directory: the identity key
//! (`identity.key`, mode 0600), the list of documents (`docs.log`), and one
//! envelope log per document room (`rooms/<room id>.log`).
//!
//! Compaction replaces a room log whole: the new log is written to
//! `rooms/<room id>.log.compact`, synced, and renamed over the old one (then
//! the directory is synced), so a crash leaves either the old log or the
//! new one, never a mix; a leftover `.compact` file is deleted on open.
//! Every process holds a shared lock on `lock` while it has the store open;
//! compaction takes it exclusively, so no other process can be appending to
//! a log that is being replaced (its appends would go to the old file).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mycel_core::crypto::{DocKey, Identity};
use mycel_core::id::{DocId, RoomId};

/// Largest record accepted (an envelope is at most 800 KiB).
pub const MAX_RECORD: usize = 4 * 1024 * 1024;

/// Store errors, each with the file it concerns.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// A record in the middle of a log fails its checksum or is impossible.
    Damaged {
        path: PathBuf,
        offset: u64,
        detail: &'static str,
    },
    /// An earlier write or sync failed; this log accepts no more writes.
    Poisoned {
        path: PathBuf,
    },
    /// No identity yet: run `init`.
    NoIdentity {
        path: PathBuf,
    },
    /// A record decoded to nonsense (a bug or a foreign file).
    BadRecord {
        path: PathBuf,
        detail: String,
    },
    /// Another process has the store open (compaction needs it alone).
    Busy {
        path: PathBuf,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Damaged {
                path,
                offset,
                detail,
            } => write!(
                f,
                "{} is damaged at byte {offset} ({detail}); the records after it were not read. Restore it from a backup or another replica",
                path.display()
            ),
            StoreError::Poisoned { path } => write!(
                f,
                "{}: an earlier write failed, so this store refuses further writes; restart once the disk is healthy",
                path.display()
            ),
            StoreError::NoIdentity { path } => write!(
                f,
                "no identity at {}: run `mycel-node init` first",
                path.display()
            ),
            StoreError::BadRecord { path, detail } => {
                write!(f, "{}: unreadable record: {detail}", path.display())
            }
            StoreError::Busy { path } => write!(
                f,
                "{} is in use by another mycel-node process (a running `serve`?); stop it, then compact",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What opening a log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub records: usize,
    /// Bytes of a torn tail that were truncated away.
    pub truncated: u64,
}

/// One append-only file of checksummed records.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    file: File,
    len: u64,
    poisoned: bool,
}

impl RecordLog {
    /// Opens (creating if absent) and reads every record, recovering a torn
    /// tail. Returns the log, its records, and what recovery did.
    pub fn open(path: &Path) -> Result<(RecordLog, Vec<Vec<u8>>, Recovery), StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(path))?;
        let (records, good_len) = parse_records(path, &bytes)?;
        let mut recovery = Recovery {
            records: records.len(),
            truncated: bytes.len() as u64 - good_len,
        };
        if recovery.truncated > 0 {
            file.set_len(good_len).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        } else {
            recovery.truncated = 0;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
        Ok((
            RecordLog {
                path: path.to_owned(),
                file,
                len: good_len,
                poisoned: false,
            },
            records,
            recovery,
        ))
    }

    /// Appends records and syncs them to disk: when this returns Ok they
    /// survive a crash or power loss.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                path: self.path.clone(),
            });
        }
        let buf = frame(&self.path, records)?;
        if buf.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(source) => {
                // The file may now hold part of the batch: its state is
                // unknown until reopened (which truncates a torn tail).
                self.poisoned = true;
                Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Poisons the log as a failed sync would (for tests of that path).
    #[doc(hidden)]
    pub fn poison_for_test(&mut self) {
        self.poisoned = true;
    }
}

/// Encodes records as `len ‖ CRC32C ‖ payload`.
fn frame<'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    for r in records {
        if r.len() > MAX_RECORD {
            return Err(StoreError::BadRecord {
                path: path.to_owned(),
                detail: format!("record of {} bytes exceeds {MAX_RECORD}", r.len()),
            });
        }
        buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(r).to_le_bytes());
        buf.extend_from_slice(r);
    }
    Ok(buf)
}

/// Parses records; returns them and the length of the intact prefix.
fn parse_records(path: &Path, bytes: &[u8]) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 8 {
            break; // torn header at the end
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD {
            if is_last_possible(rest) {
                break;
            }
            return Err(StoreError::Damaged {
                path: path.to_owned(),
                offset: at as u64,
                detail: "impossible record length",
            });
        }
        if rest.len() < 8 + len {
            break; // torn body at the end
        }
        let payload = &rest[8..8 + len];
        if crc32c::crc32c(payload) != crc {
            if at + 8 + len == bytes.len() {
                break; // the last record was torn mid-write
            }
            return Err(StoreError::Damaged {
                path: path.to_owned(),
                offset: at as u64,
                detail: "checksum mismatch",
            });
        }
        records.push(payload.to_vec());
        at += 8 + len;
    }
    Ok((records, at as u64))
}

/// A garbage length at the very end can only be a torn header when fewer
/// bytes follow than any record would need.
fn is_last_possible(rest: &[u8]) -> bool {
    rest.len() < 8 + 64
}

/// What the store keeps about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocEntry {
    /// A document this node can read: its key.
    Full { doc: DocId, key: DocKey },
    /// A blind pin: the room only.
    Pin { doc: DocId, room: RoomId },
}

impl DocEntry {
    pub fn doc(&self) -> DocId {
        match self {
            DocEntry::Full { doc, .. } | DocEntry::Pin { doc, .. } => *doc,
        }
    }
    pub fn room(&self) -> RoomId {
        match self {
            DocEntry::Full { doc, key } => mycel_core::crypto::room_id(key, doc),
            DocEntry::Pin { room, .. } => *room,
        }
    }
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(49);
        match self {
            DocEntry::Full { doc, key } => {
                out.push(1);
                out.extend_from_slice(&doc.0);
                out.extend_from_slice(key.as_bytes());
            }
            DocEntry::Pin { doc, room } => {
                out.push(2);
                out.extend_from_slice(&doc.0);
                out.extend_from_slice(&room.0);
            }
        }
        out
    }
    fn decode(bytes: &[u8]) -> Option<DocEntry> {
        if bytes.len() != 49 {
            return None;
        }
        let doc = DocId(bytes[1..17].try_into().ok()?);
        let rest: [u8; 32] = bytes[17..49].try_into().ok()?;
        match bytes[0] {
            1 => Some(DocEntry::Full {
                doc,
                key: DocKey::from_bytes(rest),
            }),
            2 => Some(DocEntry::Pin {
                doc,
                room: RoomId(rest),
            }),
            _ => None,
        }
    }
}

/// A node's data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    docs_log: RecordLog,
    docs: Vec<DocEntry>,
    /// Held (shared, or exclusive for compaction) while the store is open.
    lock: File,
}

impl Store {
    /// Opens a data directory (created if absent). Fails on damage.
    /// Waits while another process compacts.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let rooms = dir.join("rooms");
        std::fs::create_dir_all(&rooms).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock_shared().map_err(io_err(&lock_path))?;
        // A compaction killed before its rename leaves its new log behind;
        // the old log is still the whole truth, so the leftover goes.
        for entry in std::fs::read_dir(&rooms).map_err(io_err(&rooms))? {
            let p = entry.map_err(io_err(&rooms))?.path();
            if p.extension().is_some_and(|e| e == "compact") {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        let path = dir.join("docs.log");
        let (docs_log, records, _) = RecordLog::open(&path)?;
        let mut docs = Vec::new();
        for r in records {
            let entry = DocEntry::decode(&r).ok_or_else(|| StoreError::BadRecord {
                path: path.clone(),
                detail: "not a document entry".into(),
            })?;
            // A later entry for the same document replaces the earlier one.
            docs.retain(|d: &DocEntry| d.doc() != entry.doc());
            docs.push(entry);
        }
        Ok(Store {
            dir: dir.to_owned(),
            docs_log,
            docs,
            lock,
        })
    }

    /// Takes the store for this process alone (compaction), or fails with
    /// [`StoreError::Busy`] when another process has it open.
    pub fn lock_exclusive(&self) -> Result<(), StoreError> {
        let path = self.dir.join("lock");
        match self.lock.try_lock() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Busy { path }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn identity_path(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    /// Creates the identity key file (mode 0600) unless one exists.
    /// Returns the identity and whether it was created now.
    pub fn init_identity(&self, secret: [u8; 32]) -> Result<(Identity, bool), StoreError> {
        let path = self.identity_path();
        if path.exists() {
            return Ok((self.identity()?, false));
        }
        let tmp = self.dir.join("identity.key.tmp");
        {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&secret).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        Ok((Identity::from_secret(secret), true))
    }

    pub fn identity(&self) -> Result<Identity, StoreError> {
        let path = self.identity_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoIdentity { path });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let secret: [u8; 32] = bytes.try_into().map_err(|_| StoreError::BadRecord {
            path: path.clone(),
            detail: "an identity key is 32 bytes".into(),
        })?;
        Ok(Identity::from_secret(secret))
    }

    pub fn docs(&self) -> &[DocEntry] {
        &self.docs
    }

    pub fn doc(&self, doc: DocId) -> Option<&DocEntry> {
        self.docs.iter().find(|d| d.doc() == doc)
    }

    /// Records a document (durably) unless the same entry is there already.
    pub fn add_doc(&mut self, entry: DocEntry) -> Result<(), StoreError> {
        if self.docs.contains(&entry) {
            return Ok(());
        }
        self.docs_log.append([entry.encode().as_slice()])?;
        self.docs.retain(|d| d.doc() != entry.doc());
        self.docs.push(entry);
        Ok(())
    }

    fn room_path(&self, room: &RoomId) -> PathBuf {
        self.dir.join("rooms").join(format!("{room}.log"))
    }

    /// The size of a room's log on disk (0 when it has none).
    pub fn room_size(&self, room: &RoomId) -> Result<u64, StoreError> {
        let path = self.room_path(room);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Replaces a room's log with `records`, atomically: a crash at any
    /// point leaves the old log or the new one, each whole. Call with the
    /// store locked exclusively ([`Store::lock_exclusive`]).
    pub fn replace_room(&self, room: &RoomId, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let path = self.room_path(room);
        let tmp = path.with_extension("log.compact");
        let bytes = frame(&tmp, records.iter().map(Vec::as_slice))?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            f.write_all(&bytes).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir.join("rooms"))
    }

    /// Opens a room's envelope log: the log and the envelopes it holds.
    pub fn open_room(&self, room: &RoomId) -> Result<(RecordLog, Vec<Vec<u8>>), StoreError> {
        let path = self.room_path(room);
        let existed = path.exists();
        let (log, records, _) = RecordLog::open(&path)?;
        if !existed {
            sync_dir(&self.dir.join("rooms"))?;
        }
        Ok((log, records))
    }
}

/// Makes a file's creation or rename durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mycel-store-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn records_round_trip() {
        let d = tmp();
        let p = d.join("a.log");
        let (mut log, recs, _) = RecordLog::open(&p).unwrap();
        assert!(recs.is_empty());
        log.append([b"one".as_slice(), b"two"]).unwrap();
        log.append([b"three".as_slice()]).unwrap();
        drop(log);
        let (_, recs, rec) = RecordLog::open(&p).unwrap();
        assert_eq!(recs, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(rec.truncated, 0);
    }

    #[test]
    fn every_truncation_recovers_the_intact_prefix() {
        let d = tmp();
        let p = d.join("a.log");
        let (mut log, _, _) = RecordLog::open(&p).unwrap();
        let recs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        for r in &recs {
            log.append([r.as_slice()]).unwrap();
        }
        drop(log);
        let full = std::fs::read(&p).unwrap();
        let mut boundaries = vec![0usize];
        for r in &recs {
            boundaries.push(boundaries.last().unwrap() + 8 + r.len());
        }
        for cut in 0..=full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            let (mut log, got, rec) = RecordLog::open(&p).unwrap();
            let whole = boundaries.iter().filter(|b| **b <= cut).count() - 1;
            assert_eq!(got, recs[..whole], "cut at {cut}");
            assert_eq!(rec.truncated as usize, cut - boundaries[whole]);
            // And it appends cleanly after recovery.
            log.append([b"after".as_slice()]).unwrap();
            drop(log);
            let (_, again, _) = RecordLog::open(&p).unwrap();
            assert_eq!(again.last().map(Vec::as_slice), Some(b"after".as_slice()));
        }
    }

    #[test]
    fn damage_in_the_middle_is_reported_not_skipped() {
        let d = tmp();
        let p = d.join("a.log");
        let (mut log, _, _) = RecordLog::open(&p).unwrap();
        for i in 0..4u8 {
            log.append([vec![i; 100].as_slice()]).unwrap();
        }
        drop(log);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[108 + 50] ^= 0x40; // inside the second record's payload
        std::fs::write(&p, &bytes).unwrap();
        let err = RecordLog::open(&p).unwrap_err();
        match &err {
            StoreError::Damaged { offset, .. } => assert_eq!(*offset, 108),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("damaged at byte 108"));
        // The file is left as it was for the operator.
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
    }

    #[test]
    fn a_poisoned_log_refuses_writes() {
        let d = tmp();
        let (mut log, _, _) = RecordLog::open(&d.join("a.log")).unwrap();
        log.poison_for_test();
        assert!(matches!(
            log.append([b"x".as_slice()]),
            Err(StoreError::Poisoned { .. })
        ));
    }

    #[test]
    fn identity_file_is_private_and_docs_persist() {
        let d = tmp();
        let mut store = Store::open(&d).unwrap();
        assert!(matches!(
            store.identity(),
            Err(StoreError::NoIdentity { .. })
        ));
        let (id, created) = store.init_identity([7; 32]).unwrap();
        assert!(created);
        let (again, created) = store.init_identity([8; 32]).unwrap();
        assert!(!created);
        assert_eq!(again.peer_id(), id.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.join("identity.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let entry = DocEntry::Full {
            doc: DocId([1; 16]),
            key: DocKey::from_bytes([2; 32]),
        };
        store.add_doc(entry.clone()).unwrap();
        drop(store);
        let store = Store::open(&d).unwrap();
        assert_eq!(store.docs(), [entry]);
    }
}
