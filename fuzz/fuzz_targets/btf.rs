//! Kernel BTF (`/sys/kernel/btf/vmlinux`) as the agent's own parser reads it, and the
//! layout it resolves from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_agent::kernel::{kernel_layout, Btf};

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        let _ = kernel_layout(&btf);
        let _ = btf.size_of("task_struct");
        let _ = btf.offset_of("task_struct", "nsproxy");
        let _ = btf.param_count("bpf_lsm_file_open");
    }
});
