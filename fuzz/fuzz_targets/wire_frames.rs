//! Every frame decoder of the wire format, on arbitrary bytes: decoding
//! returns an error or a message, never panics; a decoded message survives
//! encode + decode unchanged, and its encoding is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mycel_core::wire::{
    DirectFrame, MAX_FRAME, RelayEvent, RelayRequest, SyncMessage, decode_frame, encode_frame,
};

macro_rules! round_trip {
    ($t:ty, $data:expr) => {
        if let Ok(msg) = decode_frame::<$t>($data, MAX_FRAME) {
            let bytes = encode_frame(&msg);
            let again = decode_frame::<$t>(&bytes, MAX_FRAME).unwrap_or_else(|e| {
                panic!(
                    "{} re-encoded from {msg:?} does not decode: {e}",
                    stringify!($t)
                )
            });
            assert_eq!(again, msg, "{} changed in a round trip", stringify!($t));
            assert_eq!(
                encode_frame(&again),
                bytes,
                "{} encoding is not stable",
                stringify!($t)
            );
        }
    };
}

fuzz_target!(|data: &[u8]| {
    round_trip!(RelayRequest, data);
    round_trip!(RelayEvent, data);
    round_trip!(SyncMessage, data);
    round_trip!(DirectFrame, data);
});
