//! How far the verifier walks each datapath program on this kernel, against its limit of a
//! million instructions: printed for every program (`--nocapture`), and failed when one
//! comes within `HEADROOM` of the limit, before a change takes it over the limit on a node.
//! Debian's 6.1 walks the deciders furthest (docs/design.md, "Stages"); the VM matrix runs
//! this there.

use std::path::Path;

use aya::programs::Program;
use moat_lab::bench::harness::Loaded;

/// The kernel refuses a program whose verification walks more instructions than this.
const VERIFIER_LIMIT: u32 = 1_000_000;
/// What a program must leave unused of the limit.
const HEADROOM: u32 = 50_000;

#[test]
fn every_datapath_program_leaves_the_verifier_headroom() {
    let mut loaded = Loaded::new(Path::new("/sys/fs/bpf"), &format!("test-verifier-{}", std::process::id())).expect("loads");
    let names: Vec<String> = loaded.ebpf.programs().map(|(name, _)| name.to_string()).collect();
    let mut walked = Vec::new();
    for name in names {
        let program = loaded.ebpf.program_mut(&name).expect("listed");
        // The deciders and the DNS check are loaded already (as stages); the rest here.
        let loading = match program {
            Program::CgroupSkb(program) if program.fd().is_err() => program.load(),
            Program::SchedClassifier(program) if program.fd().is_err() => program.load(),
            Program::CgroupSockAddr(program) if program.fd().is_err() => program.load(),
            Program::CgroupSkb(_) | Program::SchedClassifier(_) | Program::CgroupSockAddr(_) => Ok(()),
            // The guard's programs are loaded by the guard, by kind and kernel.
            _ => continue,
        };
        loading.unwrap_or_else(|e| panic!("{name} loads: {e}"));
        let info = loaded.ebpf.program(&name).expect("listed").info().unwrap_or_else(|e| panic!("{name}: program info: {e}"));
        let count = info.verified_instruction_count().unwrap_or_else(|| panic!("{name}: the kernel gives no verified instruction count"));
        println!("{name:<20} {count:>9}");
        walked.push((name, count));
    }
    assert!(walked.iter().any(|(name, _)| name == "moat_decide_in"), "the deciders are among the programs: {walked:?}");
    let tight: Vec<_> = walked.iter().filter(|(_, count)| *count > VERIFIER_LIMIT - HEADROOM).collect();
    assert!(tight.is_empty(), "within {HEADROOM} of the verifier's limit of {VERIFIER_LIMIT}: {tight:?}");
}
