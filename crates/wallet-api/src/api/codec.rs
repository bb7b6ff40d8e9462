//! The wallet API's protobuf codec: prost's, except that a message that does not decode is a
//! clear `INVALID_ARGUMENT` / `MALFORMED_REQUEST` instead of `INTERNAL` with the decoder's text.

use std::marker::PhantomData;

use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

/// prost's codec with friendlier decode errors; the generated code names it (`build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct WalletCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WalletCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for WalletCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = WalletDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        WalletDecoder(PhantomData)
    }
}

/// Decodes one message; see the module docs.
#[derive(Debug)]
pub struct WalletDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for WalletDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        U::decode(buf).map(Some).map_err(|_| {
            // The decoder's own text names prost internals; the caller needs only to know that
            // the bytes are not this method's message.
            super::errors::status(
                Code::InvalidArgument,
                "MALFORMED_REQUEST",
                "the message is not valid protobuf of this method's type; nothing was done",
                &[],
            )
        })
    }
}
