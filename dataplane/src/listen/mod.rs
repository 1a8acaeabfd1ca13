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
