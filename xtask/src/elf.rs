//! The one check the release makes on the enclave binaries' ELF: that they are static (no
//! program interpreter, no `DT_NEEDED` library), since an enclave has no libraries to load.
//! Reads only the ELF64 little-endian header, program headers and dynamic section, with every
//! offset checked against the file's length.

use anyhow::{bail, ensure, Context, Result};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
/// `ET_EXEC` (static) or `ET_DYN` (static-pie).
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    let s = b.get(at..at + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let s = b.get(at..at + 8).context("ELF truncated")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn usize_at(b: &[u8], at: usize) -> Result<usize> {
    usize::try_from(u64_at(b, at)?).context("ELF offset out of range")
}

/// What kind of static binary `bytes` is: "static-pie" or "static"; an error when it is not
/// an x86-64 ELF, or names an interpreter or a shared library.
pub fn check_static(bytes: &[u8]) -> Result<&'static str> {
    ensure!(bytes.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(
        bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
        "not a 64-bit little-endian ELF"
    );
    let kind = match u16_at(bytes, 16)? {
        ET_EXEC => "static",
        ET_DYN => "static-pie",
        t => bail!("ELF type {t} is not an executable"),
    };
    let phoff = usize_at(bytes, 32)?;
    let phentsize = usize::from(u16_at(bytes, 54)?);
    let phnum = usize::from(u16_at(bytes, 56)?);
    ensure!(phentsize >= 56, "bad program header size {phentsize}");
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).context("overflow")?)
            .context("overflow")?;
        match u32_at(bytes, ph)? {
            PT_INTERP => bail!("it names a program interpreter (dynamically linked)"),
            PT_DYNAMIC => {
                let off = usize_at(bytes, ph + 8)?;
                let size = usize_at(bytes, ph + 32)?;
                let end = off.checked_add(size).context("overflow")?;
                ensure!(end <= bytes.len(), "dynamic section out of the file");
                for entry in (off..end).step_by(16) {
                    match u64_at(bytes, entry)? {
                        DT_NULL => break,
                        DT_NEEDED => bail!("it needs a shared library (DT_NEEDED)"),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_is_refused() {
        // This test binary is linked dynamically.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_static(&me).is_err());
        assert!(check_static(b"\x7fELF").is_err());
        assert!(check_static(b"#!/bin/sh\n").is_err());
    }
}
