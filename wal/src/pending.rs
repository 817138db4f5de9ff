//! A submitted record's handle: waited on, or polled as a future, until it is durable.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::shared::{Shared, State};
use crate::{AppendError, Lsn};

/// A submitted record: wait for it with [`Pending::wait`], or `.await` it.
#[must_use = "a record is acknowledged only when its Pending is waited on"]
pub struct Pending {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lsn: Lsn,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("lsn", &self.lsn).finish()
    }
}

impl Pending {
    /// The record's LSN (assigned at submission; the record is not yet acknowledged).
    #[must_use]
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    pub(crate) fn check(&self, st: &State) -> Option<Result<Lsn, AppendError>> {
        if st.acked_lsn >= self.lsn {
            Some(Ok(self.lsn))
        } else if let Some(e) = &st.failed {
            Some(Err(AppendError::Failed(Arc::clone(e))))
        } else if st.flusher_done {
            Some(Err(AppendError::Closed))
        } else {
            None
        }
    }

    /// Blocks until the record is acknowledged and returns its LSN.
    ///
    /// # Errors
    /// [`AppendError::Failed`] if the log was poisoned first; [`AppendError::Closed`].
    pub fn wait(self) -> Result<Lsn, AppendError> {
        // One condition variable for all blocking waiters: the flusher wakes them with a single
        // `notify_all` (measured faster than waking each acknowledged thread by itself, which puts
        // a syscall per record on the flusher's critical path).
        let mut st = self.shared.state();
        loop {
            if let Some(r) = self.check(&st) {
                return r;
            }
            st = self.shared.acked.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Future for Pending {
    type Output = Result<Lsn, AppendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.state();
        if let Some(r) = self.check(&st) {
            return Poll::Ready(r);
        }
        st.wakers.insert(self.lsn, cx.waker().clone());
        Poll::Pending
    }
}
