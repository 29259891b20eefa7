//! Field offsets of kernel structures, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! rustc emits no CO-RE relocations for BPF programs, so the agent resolves the few fields the
//! programs read and hands their offsets in at load time. This reader knows just enough of the
//! BTF format (`Documentation/bpf/btf.rst`) to walk struct and union members, including the
//! anonymous structs that hold `mm_struct.map_count` on 6.x kernels.

use std::{fmt, path::Path};

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;

/// Why an offset could not be found; the caller decides whether that is fatal.
#[derive(Debug, PartialEq, Eq)]
pub enum BtfError {
    /// The data is not BTF or is cut short.
    Malformed(&'static str),
    /// No struct of that name.
    NoStruct(String),
    /// The struct has no such member (also not inside its anonymous members).
    NoMember { ty: String, member: String },
    /// The member is a bitfield, which the programs cannot read at a byte offset.
    Bitfield { ty: String, member: String },
}

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed BTF: {what}"),
            Self::NoStruct(ty) => write!(f, "the kernel's BTF has no struct {ty}"),
            Self::NoMember { ty, member } => write!(f, "struct {ty} has no member {member}"),
            Self::Bitfield { ty, member } => write!(f, "{ty}.{member} is a bitfield"),
        }
    }
}

impl std::error::Error for BtfError {}

/// One BTF type: its kind, name, and for structs and unions the members
/// `(name offset, type id, bit offset)`.
struct Type {
    kind: u32,
    name_off: u32,
    /// `size` for structs/unions, the referenced type id for modifiers and typedefs.
    size_or_ref: u32,
    kind_flag: bool,
    members: Vec<(u32, u32, u32)>,
}

/// The parsed types and string section of a BTF blob.
pub struct Btf {
    /// Types by id; id 0 is `void` and has no entry, so `types[id - 1]`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_kernel() -> std::io::Result<Self> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let data = std::fs::read(path)?;
        Self::parse(&data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Parses a little- or big-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data.get(..2).ok_or(BtfError::Malformed("no header"))?;
        let little = match u16::from_le_bytes([magic[0], magic[1]]) {
            MAGIC => true,
            m if m.swap_bytes() == MAGIC => false,
            _ => return Err(BtfError::Malformed("bad magic")),
        };
        let word = |at: usize| -> Result<u32, BtfError> {
            let bytes: [u8; 4] = data
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or(BtfError::Malformed("truncated"))?;
            Ok(if little {
                u32::from_le_bytes(bytes)
            } else {
                u32::from_be_bytes(bytes)
            })
        };
        let hdr_len = word(4)? as usize;
        let type_start = hdr_len + word(8)? as usize;
        let type_end = type_start + word(12)? as usize;
        let str_start = hdr_len + word(16)? as usize;
        let str_end = str_start + word(20)? as usize;
        let strings = data
            .get(str_start..str_end)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        if type_end > data.len() {
            return Err(BtfError::Malformed("type section out of bounds"));
        }

        let mut types = Vec::new();
        let mut at = type_start;
        while at < type_end {
            let name_off = word(at)?;
            let info = word(at + 4)?;
            let size_or_ref = word(at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let mut members = Vec::new();
            at += match kind {
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let base = at + m * 12;
                        members.push((word(base)?, word(base + 4)?, word(base + 8)?));
                    }
                    vlen * 12
                }
                // int, var, decl_tag: one extra word
                1 | 14 | 17 => 4,
                // array
                3 => 12,
                // func_proto: its parameters (name, type), kept as members at offset 0
                KIND_FUNC_PROTO => {
                    for m in 0..vlen {
                        let base = at + m * 8;
                        members.push((word(base)?, word(base + 4)?, 0));
                    }
                    vlen * 8
                }
                // enum: 8 bytes per entry
                6 => vlen * 8,
                // datasec, enum64: 12 bytes per entry
                15 | 19 => vlen * 12,
                // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(Type {
                kind,
                name_off,
                size_or_ref,
                kind_flag: info >> 31 == 1,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    /// Whether the kernel has a function of this name (one a BPF trampoline can attach to).
    pub fn has_function(&self, name: &str) -> bool {
        self.find(KIND_FUNC, name).is_some()
    }

    /// The size in bytes of `struct ty`.
    pub fn struct_size(&self, ty: &str) -> Result<u32, BtfError> {
        let id = self
            .find(KIND_STRUCT, ty)
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
        Ok(self.types[id - 1].size_or_ref)
    }

    /// Whether `struct ty` exists and has `member` (also inside anonymous members).
    pub fn has_member(&self, ty: &str, member: &str) -> bool {
        self.find(KIND_STRUCT, ty)
            .is_some_and(|id| self.find_member(id, member, 0).is_some())
    }

    /// The number of `TP_PROTO` arguments of a raw tracepoint, from the kernel's typedef
    /// `btf_trace_NAME` (a pointer to a function taking `void *__data` and then them); `None`
    /// when the kernel has no such tracepoint.
    pub fn tracepoint_arity(&self, tracepoint: &str) -> Option<usize> {
        let typedef = self.find(KIND_TYPEDEF, &format!("btf_trace_{tracepoint}"))?;
        let ptr = self.types.get(typedef - 1)?.size_or_ref as usize;
        let ptr = self.types.get(ptr.checked_sub(1)?)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let proto = self.types.get((ptr.size_or_ref as usize).checked_sub(1)?)?;
        (proto.kind == KIND_FUNC_PROTO).then(|| proto.members.len().saturating_sub(1))
    }

    /// The id of the type of this kind and name.
    fn find(&self, kind: u32, name: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.kind == kind && self.name(t.name_off) == Some(name))
            .map(|index| index + 1)
    }

    /// Byte offset of `member` in `struct ty`, looking through anonymous struct and union
    /// members.
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        self.field_offset(ty, &[member])
    }

    /// Byte offset of a nested field: `field_offset("sock_common", &["skc_net", "net"])` is
    /// the offset of `skc_net.net`. Each step looks through anonymous members and typedefs.
    pub fn field_offset(&self, ty: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = self
            .find(KIND_STRUCT, ty)
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
        let mut bits = 0;
        for member in path {
            let (offset, member_type) =
                self.find_member(id, member, 0)
                    .ok_or_else(|| BtfError::NoMember {
                        ty: ty.to_owned(),
                        member: path.join("."),
                    })?;
            bits += offset;
            id = self.resolve(member_type as usize);
        }
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                ty: ty.to_owned(),
                member: path.join("."),
            });
        }
        Ok(bits / 8)
    }

    /// Bit offset and type id of `member` within the struct or union `id`. Anonymous members
    /// nest at most a few levels in practice; `depth` bounds the search anyway.
    fn find_member(&self, id: usize, member: &str, depth: u32) -> Option<(u32, u32)> {
        let ty = self.types.get(id.checked_sub(1)?)?;
        if depth > 8 {
            return None;
        }
        for &(name_off, member_type, offset) in &ty.members {
            let bits = if ty.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            let is_bitfield = ty.kind_flag && offset >> 24 != 0;
            if name_off == 0 {
                let inner = self.resolve(member_type as usize);
                if let Some((found, found_type)) = self.find_member(inner, member, depth + 1) {
                    return Some((bits + found, found_type));
                }
            } else if self.name(name_off) == Some(member) {
                // A bitfield's bit offset is not a byte offset even when it is a multiple of 8.
                return Some((if is_bitfield { bits | 1 } else { bits }, member_type));
            }
        }
        None
    }

    /// Follows typedefs and modifiers to the underlying type id.
    fn resolve(&self, mut id: usize) -> usize {
        for _ in 0..16 {
            match self.types.get(id.wrapping_sub(1)) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_ref as usize;
                }
                _ => break,
            }
        }
        id
    }

    fn name(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind, name, size or referenced type, kind_flag, members as (name, type, offset)).
    type TypeSpec<'a> = (u32, &'a str, u32, bool, &'a [(&'a str, u32, u32)]);

    /// Builds a little-endian BTF blob.
    fn blob(types: &[TypeSpec<'_>]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut intern = |s: &str| -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let mut type_bytes = Vec::new();
        for &(kind, name, size, kind_flag, members) in types {
            let info = (kind << 24) | (u32::from(kind_flag) << 31) | members.len() as u32;
            for w in [intern(name), info, size] {
                type_bytes.extend_from_slice(&w.to_le_bytes());
            }
            if kind == 1 {
                type_bytes.extend_from_slice(&32u32.to_le_bytes());
            }
            for &(m, ty, off) in members {
                let words = [intern(m), ty, off];
                // A func_proto's parameters have no offset.
                let words = if kind == KIND_FUNC_PROTO {
                    &words[..2]
                } else {
                    &words[..]
                };
                for w in words {
                    type_bytes.extend_from_slice(&w.to_le_bytes());
                }
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_structs_and_typedefs() {
        // 1: int; 2: anonymous struct { int pad; int map_count; } at bit 64;
        // 3: typedef anon_t -> 2; 4: struct mm_struct { int a; anon_t; }
        let data = blob(&[
            (1, "int", 4, false, &[]),
            (
                KIND_STRUCT,
                "",
                8,
                false,
                &[("pad", 1, 0), ("map_count", 1, 32)],
            ),
            (KIND_TYPEDEF, "anon_t", 2, false, &[]),
            (
                KIND_STRUCT,
                "mm_struct",
                24,
                false,
                &[("a", 1, 0), ("", 3, 64)],
            ),
        ]);
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("mm_struct", "a"), Ok(0));
        assert_eq!(btf.member_offset("mm_struct", "map_count"), Ok(12));
        assert_eq!(
            btf.member_offset("mm_struct", "nope"),
            Err(BtfError::NoMember {
                ty: "mm_struct".into(),
                member: "nope".into()
            })
        );
        assert_eq!(
            btf.member_offset("task_struct", "mm"),
            Err(BtfError::NoStruct("task_struct".into()))
        );
    }

    #[test]
    fn nested_paths_follow_member_types() {
        // 1: ptr; 2: anon struct { ptr net; } ; 3: typedef possible_net_t -> 2;
        // 4: struct sock_common { int pad[6]; possible_net_t skc_net at byte 48; }
        let data = blob(&[
            (2, "", 0, false, &[]),
            (KIND_STRUCT, "", 8, false, &[("net", 1, 0)]),
            (KIND_TYPEDEF, "possible_net_t", 2, false, &[]),
            (
                KIND_STRUCT,
                "sock_common",
                56,
                false,
                &[("skc_net", 3, 384)],
            ),
        ]);
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.field_offset("sock_common", &["skc_net", "net"]), Ok(48));
        assert_eq!(
            btf.field_offset("sock_common", &["skc_net", "nope"]),
            Err(BtfError::NoMember {
                ty: "sock_common".into(),
                member: "skc_net.nope".into()
            })
        );
    }

    #[test]
    fn kind_flag_offsets_and_bitfields() {
        // With kind_flag set, the low 24 bits are the bit offset and the top 8 the bitfield size.
        let data = blob(&[
            (1, "int", 4, false, &[]),
            (
                KIND_STRUCT,
                "sock_common",
                8,
                true,
                &[("skc_state", 1, 0x0800_0010), ("odd", 1, 0x0300_0013)],
            ),
        ]);
        let btf = Btf::parse(&data).unwrap();
        // Bitfields are reported as such even when byte-aligned: their size is not the type's.
        assert!(matches!(
            btf.member_offset("sock_common", "skc_state"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.member_offset("sock_common", "odd"),
            Err(BtfError::Bitfield { .. })
        ));
    }

    #[test]
    fn tracepoint_arguments_and_functions() {
        // 1: int; 2: func_proto (void *__data, int, int); 3: ptr -> 2;
        // 4: typedef btf_trace_sched_switch -> 3; 5: func __x64_sys_mmap -> 2
        let data = blob(&[
            (1, "int", 4, false, &[]),
            (
                KIND_FUNC_PROTO,
                "",
                1,
                false,
                &[("__data", 1, 0), ("preempt", 1, 0), ("prev", 1, 0)],
            ),
            (KIND_PTR, "", 2, false, &[]),
            (KIND_TYPEDEF, "btf_trace_sched_switch", 3, false, &[]),
            (KIND_FUNC, "__x64_sys_mmap", 2, false, &[]),
        ]);
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.tracepoint_arity("sched_switch"), Some(2));
        assert_eq!(btf.tracepoint_arity("mmap_lock_released"), None);
        assert!(btf.has_function("__x64_sys_mmap"));
        assert!(!btf.has_function("__x64_sys_mseal"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(&[1, 2, 3]),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Malformed(_))));
        let mut data = blob(&[(1, "int", 4, false, &[])]);
        data.truncate(30);
        assert!(matches!(Btf::parse(&data), Err(BtfError::Malformed(_))));
    }
}
