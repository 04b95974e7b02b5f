//! Records from the `EVENTS` ring buffer, decoded as the reader does and named as the
//! pipeline does (a detection reads /proc for its process: harmless, read-only).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_agent::compiler::Index;
use moat_agent::events::deny::DenyRecord;
use moat_agent::events::pipeline::Input;
use moat_agent::events::reader::decode_record;

fuzz_target!(|data: &[u8]| {
    let index = Index::default();
    match decode_record(data) {
        Some(Input::Deny(event)) => {
            let _ = DenyRecord::from_event(&event, &index);
        }
        Some(Input::Guard(event)) => {
            let _ = moat_agent::events::detection::decode(&event, &index);
        }
        _ => {}
    }
});
