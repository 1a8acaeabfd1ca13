//! Layer 7: the front doors. Each one accepts connections and hands requests to the pipeline
//! through a [`live::Live`] handle (the runtime serving now and the drain signal), never
//! through the `Dataplane` that owns them.

pub mod h1;
pub mod h2;
pub mod h3;
pub mod h3_websocket;
pub mod live;
pub mod tcp;

/// `Box::pin(make())` with the future built in its allocation rather than on the stack and
/// copied there. An async fn's first write is its few arguments, but a move copies the whole
/// state: the pipeline's request future is ~8.5 KiB, and `Box::pin(proxy::handle(…))` copied
/// all of it per request (callgrind, where the copy is `rep movsb` counted per byte: ~9,400
/// instructions per HTTP/3 request). With the closure inlined, the release build writes the
/// arguments straight into the allocation (checked with callgrind: no copy left).
#[inline(always)]
pub(crate) fn boxed_in_place<F: std::future::Future>(
    make: impl FnOnce() -> F,
) -> std::pin::Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: the slot was written on the line above.
    Box::into_pin(unsafe { slot.assume_init() })
}

/// How many bytes of freed request-future blocks each thread keeps for [`recycled_in_place`],
/// per future type, as HAProxy keeps a per-thread cache of freed pool objects (512 KiB by
/// default). Load comes in waves: in the HTTP/2 harness all 160 streams in flight finish
/// together and 160 new ones start, so a few spares are not enough (32 served 20% of the
/// requests); 1 MiB holds ~120 of the pipeline's ~8.5 KiB futures. Kept once a burst has
/// filled it, as HAProxy's is.
const SPARE_BYTES: usize = 1 << 20;

/// Future types with a list of spares (HTTP/2's and HTTP/3's request futures); another type's
/// blocks go straight back to the allocator.
const SPARE_LAYOUTS: usize = 4;

/// Freed blocks of one future type's [`Recycled`] futures.
struct SpareList {
    layout: std::alloc::Layout,
    blocks: Vec<std::ptr::NonNull<u8>>,
}

/// This thread's freed blocks, one list per future type (a list per type, not one shared:
/// one protocol's burst must not take the room of another's, nor lengthen its search).
struct Spares(Vec<SpareList>);

impl Drop for Spares {
    fn drop(&mut self) {
        for list in self.0.drain(..) {
            for block in list.blocks {
                // SAFETY: allocated by `recycled_in_place` with this layout, owned by the list.
                unsafe { std::alloc::dealloc(block.as_ptr(), list.layout) };
            }
        }
    }
}

thread_local! {
    static SPARES: std::cell::RefCell<Spares> = const { std::cell::RefCell::new(Spares(Vec::new())) };
}

/// A block of `layout` from this thread's spares.
fn spare(layout: std::alloc::Layout) -> Option<std::ptr::NonNull<u8>> {
    SPARES
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            s.0.iter_mut().find(|l| l.layout == layout)?.blocks.pop()
        })
        .ok()
        .flatten()
}

/// Keeps `block` (of `layout`, its future already dropped) for the next request, or frees it.
fn give_back(layout: std::alloc::Layout, block: std::ptr::NonNull<u8>) {
    let kept = SPARES
        .try_with(|s| {
            let Ok(mut s) = s.try_borrow_mut() else {
                return false;
            };
            let i = match s.0.iter().position(|l| l.layout == layout) {
                Some(i) => i,
                None if s.0.len() < SPARE_LAYOUTS => {
                    s.0.push(SpareList {
                        layout,
                        blocks: Vec::new(),
                    });
                    s.0.len() - 1
                }
                None => return false,
            };
            let list = &mut s.0[i];
            if (list.blocks.len() + 1) * layout.size() > SPARE_BYTES {
                return false;
            }
            list.blocks.push(block);
            true
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: allocated by `recycled_in_place` with this layout; no longer used.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
    }
}

/// [`boxed_in_place`] for the request pipeline's future of HTTP/2 and HTTP/3, with the heap
/// block handed back to a per-thread list when the future is dropped and reused by the next
/// request. The ~8.5 KiB block is above mimalloc's small-block fast path: `malloc` and `free`
/// of it cost ~600 instructions per request (callgrind), and under load mimalloc kept retiring
/// and taking fresh pages for it. Measured in BENCHMARKS.md ("Issue #18, eighth pass").
#[inline(always)]
pub(crate) fn recycled_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> Recycled<F> {
    const { assert!(std::mem::size_of::<F>() > 0) };
    let layout = std::alloc::Layout::new::<F>();
    let block = spare(layout).unwrap_or_else(|| {
        // SAFETY: `layout` has a non-zero size (asserted above).
        let p = unsafe { std::alloc::alloc(layout) };
        std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    });
    let ptr = block.cast::<F>();
    // SAFETY: `block` is an unused allocation of `F`'s layout. With `make` inlined the future
    // is built in the block (no copy of its state; checked with callgrind).
    unsafe { ptr.as_ptr().write(make()) };
    Recycled {
        ptr,
        _owns: std::marker::PhantomData,
    }
}

/// A future in a heap block of its own (pinned there, as in a `Box`), whose block goes back to
/// the thread's spares when it is dropped. See [`recycled_in_place`].
pub(crate) struct Recycled<F> {
    ptr: std::ptr::NonNull<F>,
    _owns: std::marker::PhantomData<F>,
}

// SAFETY: `Recycled<F>` owns its `F` exactly as `Box<F>` does.
unsafe impl<F: Send> Send for Recycled<F> {}
// SAFETY: as above; `&Recycled<F>` gives no access to the `F`.
unsafe impl<F: Sync> Sync for Recycled<F> {}

impl<F> Unpin for Recycled<F> {}

impl<F: std::future::Future> std::future::Future for Recycled<F> {
    type Output = F::Output;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        // SAFETY: the `F` stays in its block, never moved, until `drop` drops it in place.
        unsafe { std::pin::Pin::new_unchecked(&mut *self.get_mut().ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live `F`, dropped once here; the block is then unused.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        give_back(std::alloc::Layout::new::<F>(), self.ptr.cast());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A future that counts its drops and holds a payload of `N` bytes.
    struct Probe<const N: usize> {
        drops: Arc<AtomicUsize>,
        payload: [u8; N],
    }

    impl<const N: usize> std::future::Future for Probe<N> {
        type Output = usize;
        fn poll(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<usize> {
            std::task::Poll::Ready(self.payload.iter().map(|&b| usize::from(b)).sum())
        }
    }

    impl<const N: usize> Drop for Probe<N> {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn probe<const N: usize>(drops: &Arc<AtomicUsize>, byte: u8) -> Recycled<Probe<N>> {
        let drops = drops.clone();
        recycled_in_place(move || Probe {
            drops,
            payload: [byte; N],
        })
    }

    /// A dropped future's block is the next one's; the future is dropped exactly once, its
    /// output is its own, and blocks of another layout are not handed out for it.
    #[tokio::test(flavor = "current_thread")]
    async fn blocks_are_reused_per_layout_and_futures_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let first = probe::<4096>(&drops, 1);
        let first_block = first.ptr.as_ptr() as usize;
        assert_eq!(first.await, 4096);
        assert_eq!(drops.load(Ordering::Relaxed), 1);

        let other = probe::<100>(&drops, 2);
        assert_ne!(
            other.ptr.as_ptr() as usize,
            first_block,
            "a block of another layout"
        );
        assert_eq!(other.await, 200);

        let second = probe::<4096>(&drops, 3);
        assert_eq!(
            second.ptr.as_ptr() as usize,
            first_block,
            "the spare block reused"
        );
        assert_eq!(second.await, 3 * 4096);
        assert_eq!(drops.load(Ordering::Relaxed), 3);

        // Dropped without being polled: still dropped once, the block still kept.
        drop(probe::<4096>(&drops, 4));
        assert_eq!(drops.load(Ordering::Relaxed), 4);
    }

    /// At most `SPARE_BYTES` of blocks are kept per future type, and a burst of one type
    /// leaves room for another's; the rest go back to the allocator.
    #[test]
    fn spares_are_bounded_per_type() {
        let drops = Arc::new(AtomicUsize::new(0));
        let n = SPARE_BYTES / 2048 + 10;
        let live: Vec<_> = (0..n).map(|_| probe::<2048>(&drops, 0)).collect();
        drop(live);
        let live: Vec<_> = (0..10).map(|_| probe::<3000>(&drops, 0)).collect();
        drop(live);
        assert_eq!(drops.load(Ordering::Relaxed), n + 10);
        let kept = |size: usize| {
            SPARES.with(|s| {
                let s = s.borrow();
                let list = s.0.iter().find(|l| l.layout.size() == size);
                list.map_or(0, |l| l.blocks.len())
            })
        };
        let big = std::mem::size_of::<Probe<2048>>();
        assert!(kept(big) * big <= SPARE_BYTES, "{} blocks kept", kept(big));
        assert!(kept(big) > SPARE_BYTES / 4096, "{} blocks kept", kept(big));
        assert_eq!(kept(std::mem::size_of::<Probe<3000>>()), 10);
    }
}
