//! The upstream HTTP/1.1 codec's response parsing (`weir_dataplane::upstream::h1`): head
//! (`parse_head`) and body framing (`Decoder`) over a backend's bytes. No panic, and the
//! outcome does not depend on how the bytes arrive: fed in pieces of any size it is the same as
//! all at once (a parser that kept state wrongly across reads, or misread a split CRLF or chunk
//! size, would differ). A `Content-Length` body never yields more than its length.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use weir_dataplane::upstream::h1::{parse_head, Decoder, Framing, Step};

#[derive(Debug, PartialEq)]
struct Outcome {
    head: Option<(u16, Vec<(String, Vec<u8>)>, Framing, bool)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    done: bool,
    left: usize,
    error: Option<String>,
}

fn run(data: &[u8], method: &Method, step: usize) -> Outcome {
    let mut out = Outcome {
        head: None,
        body: Vec::new(),
        trailers: Vec::new(),
        done: false,
        left: 0,
        error: None,
    };
    let mut pieces = data.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let mut decoder: Option<Decoder> = None;
    let mut eof = false;
    loop {
        let need_more = match decoder.as_mut() {
            None => match parse_head(&mut buf, method) {
                Err(e) => {
                    out.error = Some(e.to_string());
                    break;
                }
                Ok(None) => true,
                Ok(Some(h)) => {
                    let fields = h
                        .parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect();
                    out.head = Some((h.parts.status.as_u16(), fields, h.framing, h.keep_alive));
                    decoder = Some(Decoder::new(h.framing));
                    false
                }
            },
            Some(d) => match d.decode(&mut buf) {
                Err(e) => {
                    out.error = Some(e.to_string());
                    break;
                }
                Ok(Step::Data(b)) => {
                    assert!(!b.is_empty(), "an empty data frame");
                    out.body.extend_from_slice(&b);
                    false
                }
                Ok(Step::Trailers(t)) => {
                    out.trailers = t
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect();
                    out.done = true;
                    break;
                }
                Ok(Step::Done) => {
                    out.done = true;
                    break;
                }
                Ok(Step::NeedMore) => true,
            },
        };
        if !need_more {
            continue;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None if eof => break,
            None => {
                eof = true;
                if let Some(d) = decoder.as_mut() {
                    match d.eof() {
                        Ok(()) => out.done = true,
                        Err(e) => out.error = Some(e.to_string()),
                    }
                }
                break;
            }
        }
    }
    out.left = buf.len() + pieces.map(<[u8]>::len).sum::<usize>();
    if let Some((_, _, Framing::Length(n), _)) = &out.head {
        assert!(out.body.len() as u64 <= *n, "more body than its Content-Length");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = if first & 0x80 != 0 {
        Method::HEAD
    } else {
        Method::GET
    };
    let mut whole = run(rest, &method, rest.len());
    let mut pieces = run(rest, &method, usize::from(first & 0x0f) + 1);
    // Which error, and what is left unread after it, may depend on how far the input had
    // arrived (a head over the size limit is refused before its bad byte arrives); that
    // there is one may not.
    if whole.error.is_some() && pieces.error.is_some() {
        whole.error = None;
        pieces.error = None;
        (whole.left, pieces.left) = (0, 0);
    }
    assert_eq!(whole, pieces, "the outcome depends on how the bytes arrive");
});
