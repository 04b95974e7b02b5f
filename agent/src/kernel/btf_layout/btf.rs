//! A minimal reader of BTF (https://docs.kernel.org/bpf/btf.html): just enough to find a struct
//! by name and the byte offset of a member inside it. aya-obj's `Btf` does not expose member
//! offsets, so this reads the format itself.

use std::collections::HashMap;
use std::ops::Range;

use super::LayoutError;

const HEADER_LEN: usize = 24;
/// Bounds alias chains and the nesting of anonymous members, so a cyclic (malformed) BTF ends
/// in an error instead of a stack overflow.
const MAX_DEPTH: usize = 32;
/// Members one lookup may visit: anonymous members that fan out into each other could otherwise
/// make a malformed BTF take exponential time below `MAX_DEPTH`.
const MAX_VISITS: usize = 1 << 20;

// `BTF_KIND_*`.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy, Debug)]
struct Member {
    /// 0 for an anonymous struct/union member, whose members belong to the enclosing scope.
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    /// STRUCT or UNION: its size in bytes and its members' range in `Btf::members`.
    Composite { size: u32, members: Range<usize> },
    /// TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: the same layout as `target`.
    Alias { target: u32 },
    /// FUNC_PROTO: its parameter count.
    FuncProto { params: u32 },
    Other,
}

/// Parsed BTF: types, members and strings, with named structs indexed.
#[derive(Debug)]
pub struct Btf {
    /// Index = type id - 1; id 0 is `void`.
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
    /// Struct name → type id of the first STRUCT of that name.
    structs: HashMap<String, u32>,
    /// Function name → type id of its FUNC_PROTO.
    funcs: HashMap<String, u32>,
}

fn malformed(what: impl Into<String>) -> LayoutError {
    LayoutError::Malformed(what.into())
}

/// Reads a section of native or foreign byte order (the magic says which).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, LayoutError> {
        let word: [u8; 4] = self
            .pos
            .checked_add(4)
            .and_then(|end| self.bytes.get(self.pos..end))
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed(format!("type section ends inside a type (byte {})", self.pos)))?;
        self.pos += 4;
        Ok(if self.big_endian { u32::from_be_bytes(word) } else { u32::from_le_bytes(word) })
    }

    /// Skips `count` records of `size` bytes.
    fn skip(&mut self, count: u32, size: usize) -> Result<(), LayoutError> {
        let end = (count as usize).checked_mul(size).and_then(|n| self.pos.checked_add(n));
        match end {
            Some(end) if end <= self.bytes.len() => {
                self.pos = end;
                Ok(())
            }
            _ => Err(malformed(format!("type section ends inside a type (byte {})", self.pos))),
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

/// `bytes[hdr_len + off .. hdr_len + off + len]`.
fn section<'a>(bytes: &'a [u8], hdr_len: u32, off: u32, len: u32, what: &str) -> Result<&'a [u8], LayoutError> {
    let start = (hdr_len as usize).checked_add(off as usize);
    let end = start.and_then(|s| s.checked_add(len as usize));
    start
        .zip(end)
        .and_then(|(s, e)| bytes.get(s..e))
        .ok_or_else(|| malformed(format!("{what} section ({off}+{len} after the header) is beyond the {} bytes", bytes.len())))
}

impl Btf {
    pub fn parse(bytes: &[u8]) -> Result<Btf, LayoutError> {
        let big_endian = match bytes.get(..2) {
            Some([0x9f, 0xeb]) => false,
            Some([0xeb, 0x9f]) => true,
            _ => return Err(malformed("no BTF magic 0xeb9f")),
        };
        let mut header = Reader { bytes: bytes.get(..HEADER_LEN).ok_or_else(|| malformed("header truncated"))?, pos: 4, big_endian };
        if bytes[2] != 1 {
            return Err(malformed(format!("version {} (only 1 is known)", bytes[2])));
        }
        let hdr_len = header.u32()?;
        let (type_off, type_len, str_off, str_len) = (header.u32()?, header.u32()?, header.u32()?, header.u32()?);
        if (hdr_len as usize) < HEADER_LEN {
            return Err(malformed(format!("header length {hdr_len} is below {HEADER_LEN}")));
        }
        let type_section = section(bytes, hdr_len, type_off, type_len, "type")?;
        let strings = section(bytes, hdr_len, str_off, str_len, "string")?.to_vec();
        let mut btf = Btf { types: Vec::new(), members: Vec::new(), strings, structs: HashMap::new(), funcs: HashMap::new() };
        let structs = btf.read_types(Reader { bytes: type_section, pos: 0, big_endian })?;
        btf.index_structs(structs)?;
        Ok(btf)
    }

    /// Reads every type record; returns (name offset, type id) of each STRUCT.
    fn read_types(&mut self, mut r: Reader<'_>) -> Result<Vec<(u32, u32)>, LayoutError> {
        let mut structs = Vec::new();
        let mut funcs = Vec::new();
        while !r.at_end() {
            let id = self.types.len() + 1;
            let (name_off, info, size_or_type) = (r.u32()?, r.u32()?, r.u32()?);
            let (vlen, kind, kind_flag) = (info & 0xffff, (info >> 24) & 0x1f, info >> 31 == 1);
            let ty = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => r.skip(1, 4).map(|()| Type::Other)?,
                KIND_ARRAY => r.skip(1, 12).map(|()| Type::Other)?,
                KIND_ENUM => r.skip(vlen, 8).map(|()| Type::Other)?,
                KIND_FUNC_PROTO => r.skip(vlen, 8).map(|()| Type::FuncProto { params: vlen })?,
                KIND_DATASEC | KIND_ENUM64 => r.skip(vlen, 12).map(|()| Type::Other)?,
                KIND_STRUCT | KIND_UNION => {
                    let start = self.members.len();
                    for _ in 0..vlen {
                        let (name_off, type_id, offset) = (r.u32()?, r.u32()?, r.u32()?);
                        // With kind_flag the top 8 bits hold a bitfield's size, the low 24 its offset.
                        let bit_offset = if kind_flag { offset & 0x00ff_ffff } else { offset };
                        self.members.push(Member { name_off, type_id, bit_offset });
                    }
                    if kind == KIND_STRUCT && name_off != 0 {
                        structs.push((name_off, id as u32));
                    }
                    Type::Composite { size: size_or_type, members: start..self.members.len() }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias { target: size_or_type }
                }
                KIND_FUNC => {
                    if name_off != 0 {
                        funcs.push((name_off, size_or_type));
                    }
                    Type::Other
                }
                KIND_PTR | KIND_FWD | KIND_FLOAT => Type::Other,
                other => return Err(malformed(format!("type {id} has unknown kind {other}"))),
            };
            self.types.push(ty);
        }
        for (name_off, proto) in funcs {
            let name = self.name(name_off)?.to_owned();
            self.funcs.entry(name).or_insert(proto);
        }
        Ok(structs)
    }

    /// The number of parameters of kernel function `name`, None when BTF has no such function.
    pub fn param_count(&self, name: &str) -> Option<u32> {
        let proto = *self.funcs.get(name)?;
        match self.types.get((proto as usize).checked_sub(1)?)? {
            Type::FuncProto { params } => Some(*params),
            _ => None,
        }
    }

    fn index_structs(&mut self, structs: Vec<(u32, u32)>) -> Result<(), LayoutError> {
        for (name_off, id) in structs {
            let name = self.name(name_off)?.to_owned();
            self.structs.entry(name).or_insert(id);
        }
        Ok(())
    }

    /// The NUL-terminated string at `offset` in the string section.
    fn name(&self, offset: u32) -> Result<&str, LayoutError> {
        let rest = self.strings.get(offset as usize..).ok_or_else(|| malformed(format!("name offset {offset} is beyond the strings")))?;
        let len = rest.iter().position(|&b| b == 0).ok_or_else(|| malformed(format!("name at {offset} has no NUL")))?;
        std::str::from_utf8(&rest[..len]).map_err(|_| malformed(format!("name at {offset} is not UTF-8")))
    }

    /// `type_id` through its aliases: the size and members of the struct/union it names, or None
    /// for any other type (void included).
    fn composite(&self, mut type_id: u32) -> Result<Option<(u32, Range<usize>)>, LayoutError> {
        for _ in 0..MAX_DEPTH {
            if type_id == 0 {
                return Ok(None);
            }
            let ty = self.types.get(type_id as usize - 1).ok_or_else(|| malformed(format!("type id {type_id} is out of range")))?;
            match ty {
                Type::Composite { size, members } => return Ok(Some((*size, members.clone()))),
                Type::Alias { target } => type_id = *target,
                Type::Other | Type::FuncProto { .. } => return Ok(None),
            }
        }
        Err(malformed(format!("type {type_id} is behind more than {MAX_DEPTH} typedefs/qualifiers")))
    }

    fn struct_id(&self, name: &str) -> Result<u32, LayoutError> {
        self.structs.get(name).copied().ok_or_else(|| LayoutError::NoStruct(name.to_owned()))
    }

    /// `sizeof(struct name)`.
    pub fn size_of(&self, name: &str) -> Result<u32, LayoutError> {
        match self.composite(self.struct_id(name)?)? {
            Some((size, _)) => Ok(size),
            None => Err(LayoutError::NoStruct(name.to_owned())),
        }
    }

    /// Byte offset of `path` (members separated by dots, e.g. `ns.inum`) from the start of
    /// `struct struct_name`. Each step may be inside anonymous structs/unions, and steps through
    /// typedefs and qualifiers to the struct/union they name.
    pub fn offset_of(&self, struct_name: &str, path: &str) -> Result<u32, LayoutError> {
        let mut type_id = self.struct_id(struct_name)?;
        let mut bits: u64 = 0;
        let mut walked: usize = 0; // bytes of `path` already resolved, for error messages
        let mut visits_left = MAX_VISITS;
        for step in path.split('.') {
            let parent = &path[..walked.saturating_sub(1)];
            let Some((_, members)) = self.composite(type_id)? else {
                let (struct_name, member, parent) = (struct_name.to_owned(), path.to_owned(), parent.to_owned());
                return Err(LayoutError::NotComposite { struct_name, member, parent });
            };
            let Some((offset, member_type)) = self.find_member(members, step, 0, &mut visits_left)? else {
                return Err(LayoutError::NoMember { struct_name: struct_name.to_owned(), member: path.to_owned() });
            };
            bits += offset;
            type_id = member_type;
            walked += step.len() + 1;
        }
        if !bits.is_multiple_of(8) {
            let (struct_name, member) = (struct_name.to_owned(), path.to_owned());
            return Err(LayoutError::NotByteAligned { struct_name, member, bit_offset: bits });
        }
        u32::try_from(bits / 8).map_err(|_| malformed(format!("struct {struct_name} member {path} is at bit {bits}")))
    }

    /// The bit offset and type of member `name` among `members`, searching anonymous
    /// struct/union members too (their members belong to the enclosing scope in C).
    fn find_member(
        &self,
        members: Range<usize>,
        name: &str,
        depth: usize,
        visits_left: &mut usize,
    ) -> Result<Option<(u64, u32)>, LayoutError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!("anonymous members nested deeper than {MAX_DEPTH}")));
        }
        let members = self.members.get(members).ok_or_else(|| malformed("member range out of bounds"))?;
        for member in members {
            *visits_left = visits_left.checked_sub(1).ok_or_else(|| malformed(format!("member {name} not found within {MAX_VISITS} members")))?;
            if member.name_off != 0 {
                if self.name(member.name_off)? == name {
                    return Ok(Some((u64::from(member.bit_offset), member.type_id)));
                }
            } else if let Some((_, inner)) = self.composite(member.type_id)? {
                if let Some((offset, type_id)) = self.find_member(inner, name, depth + 1, visits_left)? {
                    return Ok(Some((u64::from(member.bit_offset) + offset, type_id)));
                }
            }
        }
        Ok(None)
    }
}
