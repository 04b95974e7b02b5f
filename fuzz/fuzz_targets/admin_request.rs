//! The admin socket's request: the bounded line reader and the request parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_agent::admin::protocol::{parse_request, read_request};

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build();
    if let Ok(runtime) = runtime {
        let mut reader = data;
        let _ = runtime.block_on(read_request(&mut reader));
    }
});
