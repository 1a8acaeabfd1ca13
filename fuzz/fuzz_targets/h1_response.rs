//! The upstream HTTP/1.1 codec's response parsing (`weir_dataplane::upstream::h1`): head
//! (`parse_head`) and body framing (`Decoder`) over a backend's bytes. No panic, and the
//! outcome does not depend on how the bytes arrive: fed in pieces of any size it is the same as
//! all at once (a parser that kept state wrongly across reads, or misread a split CRLF or chunk
//! size, would differ). A `Content-Length` body never yields more than its length.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use weir_dataplane::upstream::h1::replay;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = if first & 0x80 != 0 {
        Method::HEAD
    } else {
        Method::GET
    };
    let whole = replay(rest, &method, rest.len());
    let pieces = replay(rest, &method, usize::from(first & 0x0f) + 1);
    assert_eq!(whole, pieces, "the outcome depends on how the bytes arrive");
});
