pub use self::{
    decoder::{decode_stateless, Decoded, DecoderError},
    encoder::{encode_stateless, encode_stateless_borrowed, EncoderError},
    field::HeaderField,
};

/// Weir patch (speed): a buffer size for a field section encoded from `headers` plus a status:
/// every name and value once (the Huffman code is at most as long for the usual characters),
/// two prefix bytes per field and the section prefix; a longer encoding just grows the buffer.
pub fn field_section_capacity(headers: &http::HeaderMap) -> usize {
    16 + headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 2)
        .sum::<usize>()
}

mod block;
mod dynamic;
mod field;
mod parse_error;
mod static_;
mod stream;
mod vas;

mod decoder;
mod encoder;

pub(crate) mod prefix_int; // Weir patch: read by the encoder-stream check in connection.rs
mod prefix_string;

#[cfg(test)]
mod tests;

#[derive(Debug)]
pub enum Error {
    Encoder(EncoderError),
    Decoder(DecoderError),
}

impl std::error::Error for Error {}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Encoder(e) => write!(f, "Encoder {}", e),
            Error::Decoder(e) => write!(f, "Decoder {}", e),
        }
    }
}
