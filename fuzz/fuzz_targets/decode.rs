//! Fuzzes the manager link frame decoder: any text must decode or fail with a classified
//! error, never panic, and every decoded frame must survive an encode/decode round trip.
#![no_main]

use autogate_proto::{decode, encode, DecodeError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by protocol; the transport rejects anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A small limit on some inputs also exercises the oversize path.
    let max = if data.first() == Some(&b' ') {
        64
    } else {
        1 << 20
    };
    match decode(text, max) {
        Ok(frame) => {
            let again = encode(&frame);
            assert_eq!(decode(&again, usize::MAX).ok(), Some(frame));
        }
        Err(DecodeError::TooLarge { len, max }) => assert!(len > max),
        Err(err) => {
            assert!(err.code().is_some());
            if let Some(response) = err.to_response() {
                let _ = encode(&response.into());
            }
        }
    }
});
