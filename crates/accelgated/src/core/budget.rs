//! How much image memory the daemon holds for callers at once.
//!
//! Program, Configure and Flash read the caller's whole image into memory (what is hashed,
//! verified and written must be one buffer). Without a bound, many parallel calls with large
//! sparse memfds would make the daemon allocate far more than the host has. Every image read
//! first reserves its size here, in total and per caller uid; a request that does not fit is
//! refused at once with Busy (never queued: a queue is memory too) and the reservation lives
//! as long as the image's bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Image bytes all callers together may have in the daemon at once, unless a device allows a
/// larger image (then that size, so the largest allowed image can always be taken).
pub const TOTAL_IMAGE_BYTES: u64 = 160 * 1024 * 1024;
/// Images one caller uid may have in flight (being read, checked or written) at once.
pub const IMAGES_PER_CALLER: usize = 2;
/// The budget counts in units of this many bytes (a semaphore counts permits in u32).
const UNIT: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("uid {uid} already has {IMAGES_PER_CALLER} images in flight; retry when one is done")]
    PerCaller { uid: u32 },
    #[error("the daemon holds as many image bytes as it may ({total} bytes); retry later")]
    Total { total: u64 },
}

struct Inner {
    total_bytes: u64,
    total: Arc<Semaphore>,
    per_uid: Mutex<HashMap<u32, usize>>,
}

/// The daemon's image budget.
#[derive(Clone)]
pub struct ImageBudget {
    inner: Arc<Inner>,
}

/// Bytes reserved for one image; given back when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
    uid: u32,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("uid", &self.uid)
            .finish()
    }
}

impl ImageBudget {
    /// A budget of `total_bytes` (at least [`TOTAL_IMAGE_BYTES`]).
    pub fn new(total_bytes: u64) -> ImageBudget {
        let total_bytes = total_bytes.max(TOTAL_IMAGE_BYTES);
        let units = usize::try_from(total_bytes.div_ceil(UNIT)).unwrap_or(usize::MAX >> 4);
        ImageBudget {
            inner: Arc::new(Inner {
                total_bytes,
                total: Arc::new(Semaphore::new(units)),
                per_uid: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Reserves `bytes` for an image of `uid`, or says why not, without waiting.
    pub fn reserve(&self, uid: u32, bytes: u64) -> Result<Reservation, BudgetError> {
        {
            let mut per_uid = self.inner.per_uid.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_uid.entry(uid).or_insert(0);
            if *n >= IMAGES_PER_CALLER {
                return Err(BudgetError::PerCaller { uid });
            }
            *n += 1;
        }
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        match self.inner.total.clone().try_acquire_many_owned(units) {
            Ok(permit) => Ok(Reservation {
                _permit: permit,
                inner: self.inner.clone(),
                uid,
            }),
            Err(_) => {
                release_uid(&self.inner, uid);
                Err(BudgetError::Total {
                    total: self.inner.total_bytes,
                })
            }
        }
    }
}

fn release_uid(inner: &Inner, uid: u32) {
    let mut per_uid = inner.per_uid.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = per_uid.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            per_uid.remove(&uid);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        release_uid(&self.inner, self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_caller_and_in_total_and_given_back() {
        let b = ImageBudget::new(0);
        let a1 = b.reserve(1, 64 << 20).unwrap();
        let _a2 = b.reserve(1, 1).unwrap();
        assert!(matches!(
            b.reserve(1, 1),
            Err(BudgetError::PerCaller { uid: 1 })
        ));
        let _b1 = b.reserve(2, 64 << 20).unwrap();
        assert!(matches!(
            b.reserve(3, 64 << 20),
            Err(BudgetError::Total { .. })
        ));
        drop(a1);
        b.reserve(3, 64 << 20).unwrap();
        b.reserve(1, 1).unwrap();
    }
}
