//! Comparisons of a fixed-size kernel buffer's first `len` bytes with a constant, in loops
//! bounded by the constant's length (the verifier needs the bound).

/// `buf[..len] == want`
#[inline(always)]
pub fn eq<const N: usize>(buf: &[u8; N], len: usize, want: &[u8]) -> bool {
    len == want.len() && starts(buf, len, want)
}

/// `buf[..len]` starts with `want`
#[inline(always)]
pub fn starts<const N: usize>(buf: &[u8; N], len: usize, want: &[u8]) -> bool {
    if len < want.len() || want.len() > N {
        return false;
    }
    let mut i = 0;
    while i < want.len() {
        if buf[i] != want[i] {
            return false;
        }
        i += 1;
    }
    true
}
