//! Just enough of a BTF reader to find where a field sits in a kernel struct.
//!
//! The eBPF programs are written in Rust, which has no CO-RE field relocations, so the loader
//! resolves the few struct offsets they need from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) and hands them over as read-only globals.

use std::collections::HashMap;

/// Where a btrfs inode's subvolume device is: `BTRFS_I(inode)->root->anon_dev` (byte offsets
/// of `btrfs_inode.vfs_inode`, `btrfs_inode.root`, `btrfs_root.anon_dev`), for the programs'
/// `OFF_BTRFS_*` (governance-ebpf subvolume.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtrfsOffsets {
    pub vfs_inode: u64,
    pub root: u64,
    pub anon_dev: u64,
}

/// Where the running kernel describes its own types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where the btrfs module describes its types, while it is loaded.
const BTRFS_MODULE_BTF: &str = "/sys/kernel/btf/btrfs";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{strukt}` has no field `{field}`")]
    NoField { strukt: String, field: String },
    #[error("kernel BTF: field `{strukt}.{field}` is a bitfield")]
    Bitfield { strukt: String, field: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield: bool,
}

enum Type {
    /// A struct or union and its members.
    Composite {
        name: u32,
        /// `sizeof`, in bytes.
        size: u32,
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: refers to another type.
    Alias(u32),
    /// A function (`FUNC`), by name: what tracing and LSM programs attach to.
    Func(u32),
    Pointer,
    Other,
}

/// The parsed type section of a BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// Indexed by type id less `first_id`; id 0 is `void`.
    types: Vec<Type>,
    /// The id of `types[0]`: 0, or for a module's (split) BTF the number of the kernel's types
    /// its ids continue from.
    first_id: u32,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, BtfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

/// The type section and the string section of a BTF blob.
fn sections(data: &[u8]) -> Result<(&[u8], &[u8]), BtfError> {
    if u16_at(data, 0)? != MAGIC {
        return Err(BtfError::Malformed("bad magic (not little-endian BTF?)"));
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let section = |off_at: usize| -> Result<&[u8], BtfError> {
        let off = hdr_len + u32_at(data, off_at)? as usize;
        let len = u32_at(data, off_at + 4)? as usize;
        data.get(off..off + len)
            .ok_or(BtfError::Malformed("section out of bounds"))
    };
    Ok((section(8)?, section(16)?))
}

/// Each type of a type section, in order (ids counting up), to `push`.
fn parse_types(type_sec: &[u8], mut push: impl FnMut(Type)) -> Result<(), BtfError> {
    let mut at = 0;
    while at < type_sec.len() {
        let name = u32_at(type_sec, at)?;
        let info = u32_at(type_sec, at + 4)?;
        let size_or_type = u32_at(type_sec, at + 8)?;
        at += 12;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let ty = match kind {
            KIND_STRUCT | KIND_UNION => {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = at + i * 12;
                    let offset = u32_at(type_sec, m + 8)?;
                    members.push(Member {
                        name: u32_at(type_sec, m)?,
                        type_id: u32_at(type_sec, m + 4)?,
                        bit_offset: if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        },
                        bitfield: kind_flag && offset >> 24 != 0,
                    });
                }
                Type::Composite {
                    name,
                    size: size_or_type,
                    members,
                }
            }
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                Type::Alias(size_or_type)
            }
            KIND_FUNC => Type::Func(name),
            KIND_PTR => Type::Pointer,
            _ => Type::Other,
        };
        at += match kind {
            1 => 4,             // INT
            3 => 12,            // ARRAY
            4 | 5 => vlen * 12, // STRUCT, UNION
            6 => vlen * 8,      // ENUM
            13 => vlen * 8,     // FUNC_PROTO
            14 => 4,            // VAR
            15 => vlen * 12,    // DATASEC
            17 => 4,            // DECL_TAG
            19 => vlen * 12,    // ENUM64
            0 | 2 | 7..=12 | 16 | 18 => 0,
            _ => return Err(BtfError::Malformed("unknown type kind")),
        };
        push(ty);
    }
    Ok(())
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        let data = std::fs::read(VMLINUX_BTF).map_err(|source| BtfError::Read {
            path: VMLINUX_BTF.into(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Where a btrfs inode's subvolume device is ([`BtrfsOffsets`]): from the btrfs module's
    /// BTF when the module is loaded, from the kernel's when btrfs is built in (looked at once
    /// per process: the kernel's BTF does not change), else None (no btrfs here yet).
    pub fn btrfs_offsets() -> Result<Option<BtrfsOffsets>, BtfError> {
        static BUILT_IN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let read = |path: &str| {
            std::fs::read(path).map_err(|source| BtfError::Read {
                path: path.into(),
                source,
            })
        };
        let btf = if std::path::Path::new(BTRFS_MODULE_BTF).exists() {
            Self::parse_split(&read(VMLINUX_BTF)?, &read(BTRFS_MODULE_BTF)?)?
        } else if *BUILT_IN
            .get_or_init(|| Self::from_kernel().is_ok_and(|k| k.struct_size("btrfs_inode").is_ok()))
        {
            Self::from_kernel()?
        } else {
            return Ok(None);
        };
        Ok(Some(BtrfsOffsets {
            vfs_inode: btf.field_offset("btrfs_inode", "vfs_inode")?,
            root: btf.field_offset("btrfs_inode", "root")?,
            anon_dev: btf.field_offset("btrfs_root", "anon_dev")?,
        }))
    }

    /// Parse a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let (type_sec, strings) = sections(data)?;
        let mut types = vec![Type::Other]; // id 0: void
        parse_types(type_sec, |t| types.push(t))?;
        Ok(Self::indexed(strings.to_vec(), types, 0))
    }

    /// Parse a module's BTF (`/sys/kernel/btf/MODULE`), which continues the kernel's
    /// (`base`): its type ids follow the kernel's, and its string offsets the kernel's strings
    /// (names it shares with the kernel are the kernel's strings). The kernel's types are
    /// counted, not kept: what is looked up here is the module's own structs.
    pub fn parse_split(base: &[u8], data: &[u8]) -> Result<Self, BtfError> {
        let (base_types, base_strings) = sections(base)?;
        let mut first_id = 1u32; // after void
        parse_types(base_types, |_| first_id += 1)?;
        let (type_sec, strings) = sections(data)?;
        let mut all = Vec::with_capacity(base_strings.len() + strings.len());
        all.extend_from_slice(base_strings);
        all.extend_from_slice(strings);
        let mut types = Vec::new();
        parse_types(type_sec, |t| types.push(t))?;
        Ok(Self::indexed(all, types, first_id))
    }

    fn indexed(strings: Vec<u8>, types: Vec<Type>, first_id: u32) -> Self {
        let mut btf = Btf {
            strings,
            types,
            first_id,
            structs_by_name: HashMap::new(),
        };
        for (i, ty) in btf.types.iter().enumerate() {
            if let Type::Composite { name, .. } = ty {
                let name = btf.string(*name);
                if !name.is_empty() {
                    // The first definition wins; duplicates of kernel structs are identical.
                    btf.structs_by_name
                        .entry(name.to_owned())
                        .or_insert(first_id + i as u32);
                }
            }
        }
        btf
    }

    /// The type id of the function `name` (the first, if several share it).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| matches!(t, Type::Func(n) if self.string(*n) == name))
            .and_then(|i| u32::try_from(i).ok())
            .map(|i| self.first_id + i)
    }

    fn string(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or_default()
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        // Bounded: alias chains in real BTF are a handful long.
        for _ in 0..32 {
            match self.types.get(id.checked_sub(self.first_id)? as usize)? {
                Type::Alias(next) => id = *next,
                ty => return Some(ty),
            }
        }
        None
    }

    /// Bit offset of `field` inside the composite type `id`, looking through anonymous
    /// struct/union members (as C does).
    fn find(&self, id: u32, field: &str, depth: u32) -> Option<(u32, &Member)> {
        let Some(Type::Composite { members, .. }) = self.resolve(id) else {
            return None;
        };
        for m in members {
            let name = self.string(m.name);
            if name == field {
                return Some((m.bit_offset, m));
            }
            if name.is_empty()
                && depth < 8
                && let Some((inner, found)) = self.find(m.type_id, field, depth + 1)
            {
                return Some((m.bit_offset + inner, found));
            }
        }
        None
    }

    /// Whether `strukt.field` is a pointer (`struct file`'s `f_owner` became one in 6.12).
    pub fn field_is_pointer(&self, strukt: &str, field: &str) -> Result<bool, BtfError> {
        let (_, member) = self.member(strukt, field)?;
        Ok(matches!(self.resolve(member.type_id), Some(Type::Pointer)))
    }

    /// `strukt.field`'s bit offset and member, under the first of its `a|b` names that exists;
    /// a name `a.b` is member `b` of member `a` (`tty_struct`'s `ctrl.session`).
    fn member(&self, strukt: &str, field: &str) -> Result<(u32, &Member), BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let nested = |dotted: &str| {
            let (mut bits, mut id, mut found) = (0, id, None);
            for name in dotted.split('.') {
                let (at, m) = self.find(id, name, 0)?;
                (bits, id, found) = (bits + at, m.type_id, Some(m));
            }
            found.map(|m| (bits, m))
        };
        field
            .split('|')
            .find_map(nested)
            .ok_or_else(|| BtfError::NoField {
                strukt: strukt.into(),
                field: field.into(),
            })
    }

    /// `sizeof(struct strukt)`.
    pub fn struct_size(&self, strukt: &str) -> Result<u64, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        match self.resolve(id) {
            Some(Type::Composite { size, .. }) => Ok(u64::from(*size)),
            _ => Err(BtfError::NoStruct(strukt.into())),
        }
    }

    /// Byte offset of `strukt.field`.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Result<u64, BtfError> {
        // `a|b`: the field's names across kernel versions (kernfs_node's `parent` is `__parent`
        // from 6.15 on), the first that exists.
        let (bits, member) = self.member(strukt, field)?;
        if member.bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.into(),
                field: field.into(),
            });
        }
        Ok(u64::from(bits / 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a BTF blob: one `struct outer { int a; union { long b; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0int\0ptrs\0p\0nest\0q\0".to_vec();
        let mut types = Vec::new();
        let mut ty = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (name "int" at 11), size 4, encoding word
        ty(&[11, 1 << 24, 4, 32]);
        // 2: anonymous union { b: int at bit 0 }
        ty(&[0, (5 << 24) | 1, 8, 9, 1, 0]);
        // 3: struct outer { a: int @0, <anon union> @64 bits }
        ty(&[1, (4 << 24) | 2, 16, 7, 1, 0, 0, 2, 64]);
        // 4: function `a` (a FUNC has no payload; its type would be a FUNC_PROTO)
        ty(&[7, 12 << 24, 0]);
        // 5: int *
        ty(&[0, 2 << 24, 1]);
        // 6: struct ptrs { p: int * @0 }
        ty(&[15, (4 << 24) | 1, 8, 20, 5, 0]);
        // 7: struct nest { a: struct outer @0, q: struct outer @128 bits }
        ty(&[22, (4 << 24) | 2, 32, 7, 3, 0, 27, 3, 128]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]); // version, flags
        out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        out.extend_from_slice(&0u32.to_le_bytes()); // type_off
        out.extend_from_slice(&(types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(types.len() as u32).to_le_bytes()); // str_off
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.field_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.field_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.struct_size("outer").unwrap(), 16);
        assert!(btf.field_is_pointer("ptrs", "p").unwrap());
        assert!(!btf.field_is_pointer("outer", "a").unwrap());
        assert!(!btf.field_is_pointer("outer", "b").unwrap());
        assert!(matches!(
            btf.field_offset("outer", "c"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("inner", "a"),
            Err(BtfError::NoStruct(_))
        ));
        // Members of named members, and the alternatives.
        assert_eq!(btf.field_offset("nest", "q.b").unwrap(), 24);
        assert_eq!(btf.field_offset("nest", "q.a").unwrap(), 16);
        assert_eq!(btf.field_offset("nest", "x.b|q.b").unwrap(), 24);
        assert!(matches!(
            btf.field_offset("nest", "q.c"),
            Err(BtfError::NoField { .. })
        ));
    }

    #[test]
    fn finds_functions_by_name() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.func_id("a"), Some(4));
        assert_eq!(btf.func_id("outer"), None);
        assert_eq!(btf.func_id("nope"), None);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    /// The offsets the eBPF programs need exist in the BTF of the kernel running the tests.
    #[test]
    fn resolves_the_programs_offsets_on_this_kernel() {
        let btf = match Btf::from_kernel() {
            Ok(btf) => btf,
            // Unit tests may run on a build box without kernel BTF, but never quietly in CI.
            Err(e) if std::env::var_os("CI").is_none() => return eprintln!("not checked: {e}"),
            Err(e) => panic!("{e}"),
        };
        for (_, strukt, field) in governance_common::offsets::ALL {
            btf.field_offset(strukt, field)
                .unwrap_or_else(|e| panic!("{strukt}.{field}: {e}"));
        }
        for (_, strukt) in governance_common::offsets::SIZES {
            btf.struct_size(strukt)
                .unwrap_or_else(|e| panic!("sizeof {strukt}: {e}"));
        }
    }
}
