//! The embedded store: every object, the global revision and the watch history.
//!
//! Like etcd under kube-apiserver, the store has one monotonically increasing revision; every
//! change to an object takes the next revision, which becomes the object's `resourceVersion`,
//! and is appended to a bounded history that watches replay from. A write transaction commits
//! the objects, the revision and the history events together in one redb transaction, so after
//! a restart on the same directory nothing is lost and history resumes exactly where it was.
//!
//! All state is also held in memory (the role kube-apiserver's watch cache plays): reads and
//! watches never touch the disk, and writers are serialized.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

/// How many events the history keeps (in memory and on disk) before the oldest are compacted.
pub const DEFAULT_HISTORY_CAP: usize = 10_000;

const OBJECTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("objects");
const HISTORY: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const META_REV: &str = "revision";
const META_COMPACTED: &str = "compacted";
const DB_FILE: &str = "store.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {op}: {source}")]
    Redb {
        op: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("corrupt {table} record {key:?}: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

fn redb_err<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Redb {
        op,
        source: Box::new(e.into()),
    }
}

/// Where an object lives: its resource (`pods`, `deployments.apps`), namespace (`""` for
/// cluster-scoped kinds) and name. Ordered so that one resource, and one namespace within it,
/// are contiguous ranges.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub res: String,
    pub ns: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(res: impl Into<String>, ns: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            res: res.into(),
            ns: ns.into(),
            name: name.into(),
        }
    }

    // '|' cannot occur in a group-resource, namespace or object name.
    fn encode(&self) -> String {
        format!("{}|{}|{}", self.res, self.ns, self.name)
    }

    fn decode(s: &str) -> Option<Self> {
        let mut it = s.splitn(3, '|');
        Some(Self::new(it.next()?, it.next()?, it.next()?))
    }

    fn range_start(res: &str, ns: Option<&str>) -> Self {
        Self::new(res, ns.unwrap_or(""), "")
    }

    fn in_range(&self, res: &str, ns: Option<&str>) -> bool {
        self.res == res && ns.is_none_or(|ns| self.ns == ns)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as kept in the history. `object` is the state after the change (for a delete,
/// the last state, carrying the delete's revision as its resourceVersion); `prev` the state
/// before, so that a selector-filtered watch can tell "stopped matching" from "never matched".
#[derive(Debug, PartialEq)]
pub struct StoredEvent {
    pub rev: u64,
    pub ty: EventType,
    pub key: ObjKey,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

#[derive(Serialize)]
struct EventRecordRef<'a> {
    #[serde(rename = "type")]
    ty: EventType,
    res: &'a str,
    ns: &'a str,
    name: &'a str,
    object: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<&'a Value>,
}

#[derive(Deserialize)]
struct EventRecord {
    #[serde(rename = "type")]
    ty: EventType,
    res: String,
    ns: String,
    name: String,
    object: Value,
    #[serde(default)]
    prev: Option<Value>,
}

/// The history was compacted past the requested revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The oldest revision a watch can still start from.
    pub oldest: u64,
}

#[derive(Default)]
struct Memory {
    objects: BTreeMap<ObjKey, Arc<Value>>,
    rev: u64,
    /// Every event with a revision <= this has been dropped from the history.
    compacted: u64,
    history: VecDeque<Arc<StoredEvent>>,
}

impl Memory {
    fn range<'a>(
        &'a self,
        res: &'a str,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Arc<Value>)> + 'a {
        self.objects
            .range(ObjKey::range_start(res, ns)..)
            .take_while(move |(k, _)| k.in_range(res, ns))
    }
}

pub struct Store {
    db: Database,
    mem: RwLock<Memory>,
    writer: Mutex<()>,
    notify: watch::Sender<u64>,
    history_cap: usize,
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default history.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_history(dir, DEFAULT_HISTORY_CAP)
    }

    /// Opens (or creates) the store in `dir`, loading everything into memory; the history
    /// keeps the last `history_cap` events.
    pub fn open_with_history(dir: &Path, history_cap: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let db = Database::create(dir.join(DB_FILE)).map_err(redb_err("open"))?;
        // Creating the tables up front lets readers assume they exist.
        let tx = db.begin_write().map_err(redb_err("begin"))?;
        tx.open_table(OBJECTS).map_err(redb_err("open objects"))?;
        tx.open_table(HISTORY).map_err(redb_err("open history"))?;
        tx.open_table(META).map_err(redb_err("open meta"))?;
        tx.commit().map_err(redb_err("commit"))?;

        let mem = load(&db)?;
        tracing::info!(
            dir = %dir.display(),
            objects = mem.objects.len(),
            revision = mem.rev,
            history = mem.history.len(),
            "store opened"
        );
        let (notify, _) = watch::channel(mem.rev);
        Ok(Self {
            db,
            mem: RwLock::new(mem),
            writer: Mutex::new(()),
            notify,
            history_cap: history_cap.max(1),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Memory> {
        self.mem.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current global revision.
    pub fn rev(&self) -> u64 {
        self.read().rev
    }

    pub fn get(&self, key: &ObjKey) -> Option<Arc<Value>> {
        self.read().objects.get(key).cloned()
    }

    /// Objects of `res` (in `ns`, or everywhere) and the revision they were read at.
    pub fn list(&self, res: &str, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let mem = self.read();
        let items = mem.range(res, ns).map(|(_, v)| v.clone()).collect();
        (items, mem.rev)
    }

    /// Objects of `res` (in `ns`, or everywhere) whose key sorts after `after` (all when
    /// `None`), in key order; the revision they were read at; and the oldest revision the
    /// history still holds events after (a paged list continues only from there).
    pub fn list_after(
        &self,
        res: &str,
        ns: Option<&str>,
        after: Option<&ObjKey>,
    ) -> (Vec<(ObjKey, Arc<Value>)>, u64, u64) {
        let mem = self.read();
        let items = match after {
            None => mem
                .range(res, ns)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Some(after) => mem
                .objects
                .range((
                    std::ops::Bound::Excluded(after.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.in_range(res, ns))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        (items, mem.rev, mem.compacted)
    }

    /// Every event with a revision greater than `after`, oldest first.
    pub fn events_since(&self, after: u64) -> Result<Vec<Arc<StoredEvent>>, Compacted> {
        let mem = self.read();
        if after < mem.compacted {
            return Err(Compacted {
                oldest: mem.compacted,
            });
        }
        let start = mem.history.partition_point(|e| e.rev <= after);
        Ok(mem.history.range(start..).cloned().collect())
    }

    /// A receiver that sees the revision after every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// Runs `f` as one serialized write transaction. If it succeeds, all its changes and their
    /// events are committed atomically (unless `dry_run`) and announced to watchers.
    /// Blocking: call from a blocking thread.
    pub fn write<T, E>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let (out, changes, events, rev) = {
            let mem = self.read();
            let mut txn = Txn {
                mem: &mem,
                changes: BTreeMap::new(),
                events: Vec::new(),
                rev: mem.rev,
            };
            let out = f(&mut txn)?;
            (out, txn.changes, txn.events, txn.rev)
        };
        if dry_run || events.is_empty() {
            return Ok(out);
        }
        self.persist(&changes, &events, rev)?;

        let mut mem = self.mem.write().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in changes {
            match v {
                Some(v) => mem.objects.insert(k, v),
                None => mem.objects.remove(&k),
            };
        }
        mem.history.extend(events.into_iter().map(Arc::new));
        while mem.history.len() > self.history_cap {
            if let Some(e) = mem.history.pop_front() {
                mem.compacted = e.rev;
            }
        }
        mem.rev = rev;
        drop(mem);
        self.notify.send_replace(rev);
        Ok(out)
    }

    fn persist(
        &self,
        changes: &BTreeMap<ObjKey, Option<Arc<Value>>>,
        events: &[StoredEvent],
        rev: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb_err("begin"))?;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(redb_err("open objects"))?;
            for (k, v) in changes {
                let key = k.encode();
                match v {
                    Some(v) => {
                        let bytes = serde_json::to_vec(v.as_ref()).expect("JSON values serialize");
                        objects
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(redb_err("put object"))?;
                    }
                    None => {
                        objects
                            .remove(key.as_str())
                            .map_err(redb_err("delete object"))?;
                    }
                }
            }
            let mut history = tx.open_table(HISTORY).map_err(redb_err("open history"))?;
            for e in events {
                let rec = EventRecordRef {
                    ty: e.ty,
                    res: &e.key.res,
                    ns: &e.key.ns,
                    name: &e.key.name,
                    object: &e.object,
                    prev: e.prev.as_deref(),
                };
                let bytes = serde_json::to_vec(&rec).expect("JSON values serialize");
                history
                    .insert(e.rev, bytes.as_slice())
                    .map_err(redb_err("append history"))?;
            }
            let mut compacted = None;
            while history.len().map_err(redb_err("history length"))? > self.history_cap as u64 {
                match history.pop_first().map_err(redb_err("compact history"))? {
                    Some((k, _)) => compacted = Some(k.value()),
                    None => break,
                }
            }
            let mut meta = tx.open_table(META).map_err(redb_err("open meta"))?;
            meta.insert(META_REV, rev)
                .map_err(redb_err("put revision"))?;
            if let Some(c) = compacted {
                meta.insert(META_COMPACTED, c)
                    .map_err(redb_err("put compacted"))?;
            }
        }
        tx.commit().map_err(redb_err("commit"))
    }
}

fn load(db: &Database) -> Result<Memory, StoreError> {
    let tx = db.begin_read().map_err(redb_err("begin read"))?;
    let mut mem = Memory::default();

    let meta = tx.open_table(META).map_err(redb_err("open meta"))?;
    let get_meta = |k: &str| -> Result<u64, StoreError> {
        Ok(meta
            .get(k)
            .map_err(redb_err("read meta"))?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    mem.rev = get_meta(META_REV)?;
    mem.compacted = get_meta(META_COMPACTED)?;

    let objects = tx.open_table(OBJECTS).map_err(redb_err("open objects"))?;
    for row in objects.iter().map_err(redb_err("scan objects"))? {
        let (k, v) = row.map_err(redb_err("read object"))?;
        let corrupt = |reason: String| StoreError::Corrupt {
            table: "objects",
            key: k.value().to_string(),
            reason,
        };
        let key = ObjKey::decode(k.value()).ok_or_else(|| corrupt("bad key".into()))?;
        let value: Value = serde_json::from_slice(v.value()).map_err(|e| corrupt(e.to_string()))?;
        mem.objects.insert(key, Arc::new(value));
    }

    let history = tx.open_table(HISTORY).map_err(redb_err("open history"))?;
    for row in history.iter().map_err(redb_err("scan history"))? {
        let (k, v) = row.map_err(redb_err("read history"))?;
        let rec: EventRecord =
            serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                table: "history",
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
        mem.history.push_back(Arc::new(StoredEvent {
            rev: k.value(),
            ty: rec.ty,
            key: ObjKey::new(rec.res, rec.ns, rec.name),
            object: Arc::new(rec.object),
            prev: rec.prev.map(Arc::new),
        }));
    }
    if let Some(last) = mem.history.back() {
        if last.rev > mem.rev {
            return Err(StoreError::Corrupt {
                table: "meta",
                key: META_REV.into(),
                reason: format!("revision {} is behind history event {}", mem.rev, last.rev),
            });
        }
    }
    Ok(mem)
}

/// A write transaction: reads see its own pending changes; every `put`/`delete` takes the next
/// revision and records an event.
pub struct Txn<'a> {
    mem: &'a Memory,
    changes: BTreeMap<ObjKey, Option<Arc<Value>>>,
    events: Vec<StoredEvent>,
    rev: u64,
}

impl Txn<'_> {
    /// The latest revision, including this transaction's changes.
    pub fn rev(&self) -> u64 {
        self.rev
    }

    pub fn get(&self, key: &ObjKey) -> Option<Arc<Value>> {
        match self.changes.get(key) {
            Some(v) => v.clone(),
            None => self.mem.objects.get(key).cloned(),
        }
    }

    /// Objects of `res` (in `ns`, or everywhere), in key order.
    pub fn list(&self, res: &str, ns: Option<&str>) -> Vec<(ObjKey, Arc<Value>)> {
        let mut out: BTreeMap<ObjKey, Arc<Value>> = self
            .mem
            .range(res, ns)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in self
            .changes
            .range(ObjKey::range_start(res, ns)..)
            .take_while(|(k, _)| k.in_range(res, ns))
        {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        out.into_iter().collect()
    }

    /// Every object (of any resource) for which `pred` holds, in key order. Only matches are
    /// cloned, so scanning the whole store for owner references stays cheap.
    pub fn filter(&self, mut pred: impl FnMut(&Value) -> bool) -> Vec<(ObjKey, Arc<Value>)> {
        let mut out = Vec::new();
        for (k, v) in &self.mem.objects {
            let current = match self.changes.get(k) {
                Some(Some(changed)) => changed,
                Some(None) => continue,
                None => v,
            };
            if pred(current) {
                out.push((k.clone(), current.clone()));
            }
        }
        for (k, v) in &self.changes {
            if let Some(v) = v {
                if !self.mem.objects.contains_key(k) && pred(v) {
                    out.push((k.clone(), v.clone()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether any object satisfies `pred`.
    pub fn any(&self, mut pred: impl FnMut(&Value) -> bool) -> bool {
        let in_mem = self
            .mem
            .objects
            .iter()
            .any(|(k, v)| match self.changes.get(k) {
                Some(Some(changed)) => pred(changed),
                Some(None) => false,
                None => pred(v),
            });
        in_mem || self.changes.values().flatten().any(|v| pred(v))
    }

    /// Creates or replaces the object at `key`, stamping the new revision as its
    /// resourceVersion. Returns the stored object.
    pub fn put(&mut self, key: ObjKey, mut obj: Value) -> Arc<Value> {
        self.rev += 1;
        set_resource_version(&mut obj, self.rev);
        let obj = Arc::new(obj);
        let prev = self.get(&key);
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.events.push(StoredEvent {
            rev: self.rev,
            ty,
            key: key.clone(),
            object: obj.clone(),
            prev,
        });
        self.changes.insert(key, Some(obj.clone()));
        obj
    }

    /// Removes the object at `key`. Returns its last state, carrying the delete's revision.
    pub fn delete(&mut self, key: &ObjKey) -> Option<Arc<Value>> {
        let prev = self.get(key)?;
        self.rev += 1;
        let mut last = prev.as_ref().clone();
        set_resource_version(&mut last, self.rev);
        let last = Arc::new(last);
        self.events.push(StoredEvent {
            rev: self.rev,
            ty: EventType::Deleted,
            key: key.clone(),
            object: last.clone(),
            prev: Some(prev),
        });
        self.changes.insert(key.clone(), None);
        Some(last)
    }
}

pub fn set_resource_version(obj: &mut Value, rev: u64) {
    if let Some(map) = obj.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}})
    }

    fn key(name: &str) -> ObjKey {
        ObjKey::new("pods", "default", name)
    }

    fn put(store: &Store, name: &str) -> Arc<Value> {
        store
            .write(false, |tx| {
                Ok::<_, StoreError>(tx.put(key(name), pod(name)))
            })
            .unwrap()
    }

    #[test]
    fn revisions_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.rev(), 0);
        let a = put(&store, "a");
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        put(&store, "b");
        put(&store, "a");
        let gone = store
            .write(false, |tx| Ok::<_, StoreError>(tx.delete(&key("b"))))
            .unwrap()
            .unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "4");
        assert_eq!(store.rev(), 4);
        let evs = store.events_since(0).unwrap();
        let types: Vec<_> = evs
            .iter()
            .map(|e| (e.rev, e.ty, e.key.name.as_str()))
            .collect();
        assert_eq!(
            types,
            vec![
                (1, EventType::Added, "a"),
                (2, EventType::Added, "b"),
                (3, EventType::Modified, "a"),
                (4, EventType::Deleted, "b")
            ]
        );
        assert_eq!(
            evs[2].prev.as_ref().unwrap()["metadata"]["resourceVersion"],
            "1"
        );
        assert_eq!(store.events_since(3).unwrap().len(), 1);
        assert!(store.events_since(4).unwrap().is_empty());
        let (items, rev) = store.list("pods", Some("default"));
        assert_eq!((items.len(), rev), (1, 4));
        assert!(store.list("pods", Some("other")).0.is_empty());
        assert_eq!(store.list("pods", None).0.len(), 1);
    }

    #[test]
    fn reopen_keeps_objects_revision_and_history() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            put(&store, "a");
            put(&store, "b");
            store
                .write(false, |tx| Ok::<_, StoreError>(tx.delete(&key("a"))))
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.rev(), 3);
        assert!(store.get(&key("a")).is_none());
        assert_eq!(
            store.get(&key("b")).unwrap()["metadata"]["resourceVersion"],
            "2"
        );
        let evs = store.events_since(1).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].ty, EventType::Deleted);
        assert_eq!(evs[1].prev.as_ref().unwrap()["metadata"]["name"], "a");
        let c = put(&store, "c");
        assert_eq!(c["metadata"]["resourceVersion"], "4");
    }

    #[test]
    fn history_is_bounded_and_compaction_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_with_history(dir.path(), 3).unwrap();
            for i in 0..5 {
                put(&store, &format!("p{i}"));
            }
            assert_eq!(store.events_since(1), Err(Compacted { oldest: 2 }));
            assert_eq!(store.events_since(2).unwrap().len(), 3);
        }
        let store = Store::open_with_history(dir.path(), 3).unwrap();
        assert_eq!(store.events_since(0), Err(Compacted { oldest: 2 }));
        let revs: Vec<_> = store
            .events_since(2)
            .unwrap()
            .iter()
            .map(|e| e.rev)
            .collect();
        assert_eq!(revs, vec![3, 4, 5]);
    }

    #[test]
    fn failed_and_dry_run_transactions_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r: Result<(), StoreError> = store.write(false, |tx| {
            tx.put(key("a"), pod("a"));
            Err(StoreError::Corrupt {
                table: "t",
                key: "k".into(),
                reason: "test".into(),
            })
        });
        assert!(r.is_err());
        let obj = store
            .write(true, |tx| Ok::<_, StoreError>(tx.put(key("a"), pod("a"))))
            .unwrap();
        assert_eq!(obj["metadata"]["resourceVersion"], "1");
        assert_eq!(store.rev(), 0);
        assert!(store.get(&key("a")).is_none());
    }

    #[test]
    fn txn_sees_its_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, "a");
        store
            .write(false, |tx| {
                tx.put(key("b"), pod("b"));
                tx.delete(&key("a"));
                let names: Vec<_> = tx
                    .list("pods", Some("default"))
                    .into_iter()
                    .map(|(k, _)| k.name)
                    .collect();
                assert_eq!(names, vec!["b"]);
                assert_eq!(tx.filter(|_| true).len(), 1);
                assert!(tx.any(|v| v["metadata"]["name"] == "b"));
                assert!(!tx.any(|v| v["metadata"]["name"] == "a"));
                assert_eq!(tx.rev(), 3);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }
}
