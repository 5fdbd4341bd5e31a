//! The gRPC codec of the signalling stream: protobuf through prost, with buffers sized for
//! signalling frames.
//!
//! tonic's default codec gives every stream an 8 KiB encode buffer and an 8 KiB decode buffer.
//! Signalling frames are a few hundred bytes, and a server holds one stream per connected
//! device, so those buffers alone would be 16 KiB of every idle device. Here they start at
//! [`BUFFER_SIZE`] and grow only when a larger frame comes (up to the message size limit).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of each stream's encode and decode buffer, in bytes.
pub const BUFFER_SIZE: usize = 1024;
/// How many encoded bytes a stream gathers before it hands them to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; the generated `Signal` stubs use it.
#[derive(Debug, Clone)]
pub struct SignalCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for SignalCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

/// The buffer settings of the signalling stream's codec ([`BUFFER_SIZE`] buffers); a codec of
/// the same stream written elsewhere (the server's direct frame encoder) uses them too.
#[must_use]
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SignalCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}
