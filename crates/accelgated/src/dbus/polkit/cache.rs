//! The polkit decision cache: definite answers per (sender, action, details).
//!
//! A hit must be cheap, so a lookup borrows the request's strings instead of building an owned
//! key: the map is keyed by [`OwnedKey`], which can be borrowed as `dyn KeyView`, and a
//! [`KeyRef`] (all borrowed) is a `dyn KeyView` too. One hash, one lookup, no allocation.
//!
//! Staleness is handled by an epoch: an answer is only stored if no invalidation happened since
//! the question was asked, so an answer that polkit computed under old rules can never land in
//! the cache after the `Changed` signal that announced new ones.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use accelgate_proto::operation::Operation;

/// Past this many entries the cache starts over: a bound on memory whatever callers do.
pub const MAX_ENTRIES: usize = 8192;

/// What a polkit question is about. The action and the `operation` detail both follow from the
/// operation, so the operation stands for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef<'a> {
    pub sender: &'a str,
    pub operation: Operation,
    pub device: Option<&'a str>,
    pub slice: Option<&'a str>,
    pub image_sha256: Option<&'a str>,
    pub purpose: Option<&'a str>,
}

/// Anything that can be seen as a [`KeyRef`]; the map's borrowed key type.
pub trait KeyView {
    fn view(&self) -> KeyRef<'_>;
}

impl KeyView for KeyRef<'_> {
    fn view(&self) -> KeyRef<'_> {
        *self
    }
}

impl Hash for dyn KeyView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash(state)
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for dyn KeyView + '_ {}

/// The stored form of a [`KeyRef`].
#[derive(Debug)]
struct OwnedKey {
    sender: Box<str>,
    operation: Operation,
    device: Option<Box<str>>,
    slice: Option<Box<str>>,
    image_sha256: Option<Box<str>>,
    purpose: Option<Box<str>>,
}

impl OwnedKey {
    fn new(k: &KeyRef<'_>) -> OwnedKey {
        OwnedKey {
            sender: k.sender.into(),
            operation: k.operation,
            device: k.device.map(Into::into),
            slice: k.slice.map(Into::into),
            image_sha256: k.image_sha256.map(Into::into),
            purpose: k.purpose.map(Into::into),
        }
    }
}

impl KeyView for OwnedKey {
    fn view(&self) -> KeyRef<'_> {
        KeyRef {
            sender: &self.sender,
            operation: self.operation,
            device: self.device.as_deref(),
            slice: self.slice.as_deref(),
            image_sha256: self.image_sha256.as_deref(),
            purpose: self.purpose.as_deref(),
        }
    }
}

// Hash and Eq of the owned key must agree with those of its borrowed view (the `Borrow`
// contract), so both go through `view()`.
impl Hash for OwnedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash(state)
    }
}

impl PartialEq for OwnedKey {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for OwnedKey {}

impl<'a> Borrow<dyn KeyView + 'a> for OwnedKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    authorized: bool,
    stored: Instant,
}

/// Cached definite polkit answers.
pub struct DecisionCache {
    entries: Mutex<HashMap<OwnedKey, Entry>>,
    /// Bumped (under the lock) by every full invalidation.
    epoch: AtomicU64,
    /// Longest an answer is trusted even without a `Changed` signal: polkit rules may depend on
    /// things that change silently (session state, time of day).
    ttl: Duration,
}

impl DecisionCache {
    pub fn new(ttl: Duration) -> DecisionCache {
        DecisionCache {
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            ttl,
        }
    }

    /// The cached answer (`true`: authorized), if there is a fresh one.
    pub fn lookup(&self, key: &KeyRef<'_>) -> Option<bool> {
        let entries = self.lock();
        let entry = entries.get(key as &dyn KeyView)?;
        (entry.stored.elapsed() < self.ttl).then_some(entry.authorized)
    }

    /// The epoch to pass to [`DecisionCache::store`] for a question asked now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stores a definite answer to a question asked at `asked_at` (an [`epoch`]), unless the
    /// cache was invalidated since.
    ///
    /// [`epoch`]: DecisionCache::epoch
    pub fn store(&self, key: &KeyRef<'_>, authorized: bool, asked_at: u64) {
        let mut entries = self.lock();
        if self.epoch.load(Ordering::Acquire) != asked_at {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            OwnedKey::new(key),
            Entry {
                authorized,
                stored: Instant::now(),
            },
        );
    }

    /// Forgets every answer about a sender (it left the bus).
    pub fn forget_sender(&self, sender: &str) {
        self.lock().retain(|k, _| &*k.sender != sender);
    }

    /// Forgets everything, and makes answers to questions asked before now unstorable.
    pub fn clear(&self) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<OwnedKey, Entry>> {
        // Every operation on the map is a single insert/remove/clear, so a panic elsewhere
        // cannot leave it inconsistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(sender: &'a str, slice: Option<&'a str>) -> KeyRef<'a> {
        KeyRef {
            sender,
            operation: Operation::SliceWrite,
            device: Some("fpga0"),
            slice,
            image_sha256: None,
            purpose: None,
        }
    }

    #[test]
    fn answers_are_found_only_under_their_exact_key() {
        let c = DecisionCache::new(Duration::from_secs(60));
        c.store(&key(":1.5", Some("region0")), true, c.epoch());
        c.store(&key(":1.5", Some("region1")), false, c.epoch());
        assert_eq!(c.lookup(&key(":1.5", Some("region0"))), Some(true));
        assert_eq!(c.lookup(&key(":1.5", Some("region1"))), Some(false));
        // Another sender, another slice, another operation, another image: no answer.
        assert_eq!(c.lookup(&key(":1.6", Some("region0"))), None);
        assert_eq!(c.lookup(&key(":1.5", Some("region2"))), None);
        assert_eq!(c.lookup(&key(":1.5", None)), None);
        let read = KeyRef {
            operation: Operation::SliceRead,
            ..key(":1.5", Some("region0"))
        };
        assert_eq!(c.lookup(&read), None);
        let with_image = KeyRef {
            image_sha256: Some("ab"),
            ..key(":1.5", Some("region0"))
        };
        assert_eq!(c.lookup(&with_image), None);
    }

    #[test]
    fn a_departed_sender_loses_only_its_own_answers() {
        let c = DecisionCache::new(Duration::from_secs(60));
        c.store(&key(":1.5", Some("region0")), true, c.epoch());
        c.store(&key(":1.50", Some("region0")), true, c.epoch());
        c.forget_sender(":1.5");
        assert_eq!(c.lookup(&key(":1.5", Some("region0"))), None);
        assert_eq!(c.lookup(&key(":1.50", Some("region0"))), Some(true));
    }

    #[test]
    fn an_answer_to_a_question_asked_before_an_invalidation_is_not_stored() {
        let c = DecisionCache::new(Duration::from_secs(60));
        let asked = c.epoch();
        c.store(&key(":1.5", Some("region0")), true, asked);
        c.clear();
        assert!(c.is_empty());
        c.store(&key(":1.5", Some("region1")), true, asked);
        assert_eq!(c.lookup(&key(":1.5", Some("region1"))), None);
        c.store(&key(":1.5", Some("region1")), true, c.epoch());
        assert_eq!(c.lookup(&key(":1.5", Some("region1"))), Some(true));
    }

    #[test]
    fn answers_expire() {
        let c = DecisionCache::new(Duration::ZERO);
        c.store(&key(":1.5", Some("region0")), true, c.epoch());
        assert_eq!(c.lookup(&key(":1.5", Some("region0"))), None);
    }

    #[test]
    fn size_is_bounded() {
        let c = DecisionCache::new(Duration::from_secs(60));
        let names: Vec<String> = (0..MAX_ENTRIES + 10).map(|i| format!(":1.{i}")).collect();
        for n in &names {
            c.store(&key(n, Some("region0")), true, c.epoch());
        }
        assert!(c.len() <= MAX_ENTRIES);
        assert_eq!(
            c.lookup(&key(names.last().unwrap(), Some("region0"))),
            Some(true)
        );
    }
}
