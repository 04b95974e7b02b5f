//! The datapath programs hold no BPF-to-BPF call (docs/design.md, "Stages"): Debian 6.1's
//! verifier marks every scalar precise when a precision backtrack crosses one, prunes far
//! fewer paths, and walked the deciders to 836,646 of its 1,000,000 instructions while they
//! held thirty calls to `memset`. A call slips in unseen (a struct literal's padding, a byte
//! array copied, a function the compiler keeps apart), so this reads the object itself.

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::kernel::loader::OBJECT;

/// The per-packet programs and the decision they reach: verified on every kernel, near
/// the verifier's limit on 6.1.
const DATAPATH: [&str; 5] = ["moat_egress", "moat_ingress", "moat_decide_out", "moat_decide_in", "moat_icmp_ingress"];

/// `call` instructions to another BPF function (`BPF_PSEUDO_CALL`) in `code`.
fn bpf_calls(code: &[u8]) -> usize {
    const CALL: u8 = 0x85;
    const LOAD_IMM64: u8 = 0x18;
    const PSEUDO_CALL: u8 = 1;
    let mut calls = 0;
    let mut at = 0;
    while at + 8 <= code.len() {
        let (opcode, src_reg) = (code[at], code[at + 1] >> 4);
        if opcode == CALL && src_reg == PSEUDO_CALL {
            calls += 1;
        }
        // A 64-bit immediate load takes two instruction slots.
        at += if opcode == LOAD_IMM64 { 16 } else { 8 };
    }
    calls
}

/// The code of function symbol `symbol`.
fn code_of<'a>(file: &object::File<'a>, symbol: &object::Symbol<'a, '_>) -> &'a [u8] {
    let section = symbol.section_index().and_then(|index| file.section_by_index(index).ok()).expect("a function's section");
    let data = section.data().expect("section data");
    let start = (symbol.address() - section.address()) as usize;
    &data[start..start + symbol.size() as usize]
}

#[test]
fn the_datapath_programs_hold_no_bpf_call_but_to_their_own_body() {
    let file = object::File::parse(OBJECT).expect("the eBPF object parses");
    let functions: Vec<_> = file.symbols().filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.size() > 0).collect();
    for program in DATAPATH {
        let entry = functions.iter().find(|symbol| symbol.name() == Ok(program)).unwrap_or_else(|| panic!("{program} is in the object"));
        // aya's program macro may keep the body a function of its own (in .text, named
        // after the program): the one call allowed, from the entry to it.
        let bodies: Vec<_> = functions.iter().filter(|symbol| symbol.name().is_ok_and(|name| name != program && name.contains(program))).collect();
        let entry_calls = bpf_calls(code_of(&file, entry));
        assert!(entry_calls <= bodies.len().min(1), "{program}: {entry_calls} BPF calls in its entry");
        for body in bodies {
            let calls = bpf_calls(code_of(&file, body));
            assert_eq!(calls, 0, "{program}: {calls} BPF calls in {}", body.name().unwrap_or_default());
        }
    }
}

#[test]
fn a_call_is_counted() {
    // r1 = 0 (64-bit immediate, two slots); call pc+3 (a BPF call); call 1 (a helper); exit.
    let code = [
        [0x18, 0x01, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0x85, 0x10, 0, 0, 3, 0, 0, 0],
        [0x85, 0x00, 0, 0, 1, 0, 0, 0],
        [0x95, 0, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(bpf_calls(&code), 1);
}
