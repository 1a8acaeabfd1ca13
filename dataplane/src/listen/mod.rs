//! Layer 7: the front doors. Each one accepts connections and hands requests to the pipeline
//! through a [`live::Live`] handle (the runtime serving now and the drain signal), never
//! through the `Dataplane` that owns them.

pub mod h1;
pub mod h2;
pub mod h3;
pub mod h3_websocket;
pub mod live;
pub mod tcp;
