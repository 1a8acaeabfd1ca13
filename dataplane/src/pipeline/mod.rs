//! Layer 6: the request pipeline every front door uses ([`proxy::handle`]).

pub mod proxy;
