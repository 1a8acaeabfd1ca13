//! The downstream HTTP/1.1 server codec's request parsing (`weir_dataplane::listen::h1`): head
//! (`parse_request`) and body framing (the shared `Decoder`) over a client's bytes. No panic,
//! and the outcome does not depend on how the bytes arrive: fed in pieces of any size it is the
//! same as all at once (a parser that kept state wrongly across reads, or misread a split CRLF,
//! a split HTTP/2 preface or chunk size, would differ). A `Content-Length` body is never more
//! than its length (`replay` asserts it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_dataplane::listen::h1::replay;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = replay(rest, rest.len());
    let pieces = replay(rest, usize::from(first & 0x0f) + 1);
    assert_eq!(whole, pieces, "the outcome depends on how the bytes arrive");
});
