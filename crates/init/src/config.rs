//! Reading the enclave's command (`/cmd`: one argv element per line) and environment (`/env`:
//! one `KEY=value` per line), AWS's init formats, with bounded sizes.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Largest `/cmd` file.
pub const MAX_CMD_BYTES: u64 = 64 * 1024;
/// Largest `/env` file.
pub const MAX_ENV_BYTES: u64 = 256 * 1024;
/// Most argv elements.
pub const MAX_ARGS: usize = 4096;
/// Most environment variables.
pub const MAX_ENV_VARS: usize = 4096;
/// The search path used when `/env` sets no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors reading `/cmd` or `/env`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {0}")]
    Read(PathBuf, #[source] io::Error),
    /// The file is larger than its cap.
    #[error("{path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its cap.
        max: u64,
    },
    /// The command is empty.
    #[error("the command file is empty")]
    EmptyCommand,
    /// Too many lines.
    #[error("{what}: more than {max} entries")]
    TooMany {
        /// Which file.
        what: &'static str,
        /// The cap.
        max: usize,
    },
    /// A NUL byte, which cannot be passed to exec.
    #[error("{what} line {line} contains a NUL byte")]
    Nul {
        /// Which file.
        what: &'static str,
        /// 1-based line number.
        line: usize,
    },
    /// An environment line without `=` or with an empty key.
    #[error("environment line {0} is not KEY=value")]
    BadEnv(usize),
}

/// Reads at most `max` bytes of `path`; a longer file is an error.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ConfigError> {
    let file = File::open(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    read_bounded_from(file, path, max)
}

/// Reads at most `max` bytes of an open `file` (`path` names it in errors); a longer file is
/// an error.
pub fn read_bounded_from(file: File, path: &Path, max: u64) -> Result<Vec<u8>, ConfigError> {
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    if buf.len() as u64 > max {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(buf)
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut it = trimmed.split(|b| *b == b'\n').enumerate().peekable();
    let empty = trimmed.is_empty();
    std::iter::from_fn(move || if empty { None } else { it.next() })
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}

/// Parses `/cmd`: one argv element per line (empty lines are empty arguments, except that a
/// final newline does not add one).
pub fn parse_cmd(bytes: &[u8]) -> Result<Vec<CString>, ConfigError> {
    let mut argv = Vec::new();
    for (n, line) in lines(bytes) {
        if argv.len() == MAX_ARGS {
            return Err(ConfigError::TooMany {
                what: "cmd",
                max: MAX_ARGS,
            });
        }
        argv.push(CString::new(line).map_err(|_| ConfigError::Nul {
            what: "cmd",
            line: n,
        })?);
    }
    if argv.first().is_none_or(|a| a.as_bytes().is_empty()) {
        return Err(ConfigError::EmptyCommand);
    }
    Ok(argv)
}

/// Parses `/env`: `KEY=value` lines; empty lines are skipped.
pub fn parse_env(bytes: &[u8]) -> Result<Vec<CString>, ConfigError> {
    let mut env = Vec::new();
    for (n, line) in lines(bytes) {
        if line.is_empty() {
            continue;
        }
        if env.len() == MAX_ENV_VARS {
            return Err(ConfigError::TooMany {
                what: "env",
                max: MAX_ENV_VARS,
            });
        }
        match line.iter().position(|b| *b == b'=') {
            Some(0) | None => return Err(ConfigError::BadEnv(n)),
            Some(_) => {}
        }
        env.push(CString::new(line).map_err(|_| ConfigError::Nul {
            what: "env",
            line: n,
        })?);
    }
    Ok(env)
}

/// The value of `PATH` in `env`, or [`DEFAULT_PATH`].
pub fn search_path(env: &[CString]) -> Vec<u8> {
    env.iter()
        .find_map(|e| e.as_bytes().strip_prefix(b"PATH=").map(<[u8]>::to_vec))
        .unwrap_or_else(|| DEFAULT_PATH.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_lines() {
        let argv = parse_cmd(b"/bin/echo\nhello world\n\nend\n").unwrap();
        let argv: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
        assert_eq!(argv, [&b"/bin/echo"[..], b"hello world", b"", b"end"]);
        assert_eq!(parse_cmd(b"ls").unwrap().len(), 1);
        assert_eq!(parse_cmd(b"ls\r\n-l\r\n").unwrap()[1].as_bytes(), b"-l");
        assert!(matches!(parse_cmd(b""), Err(ConfigError::EmptyCommand)));
        assert!(matches!(parse_cmd(b"\n"), Err(ConfigError::EmptyCommand)));
        assert!(matches!(
            parse_cmd(b"a\nb\0c"),
            Err(ConfigError::Nul { line: 2, .. })
        ));
        let many = "x\n".repeat(MAX_ARGS + 1);
        assert!(matches!(
            parse_cmd(many.as_bytes()),
            Err(ConfigError::TooMany { .. })
        ));
    }

    #[test]
    fn env_lines() {
        let env = parse_env(b"A=1\n\nPATH=/bin:/x\nEMPTY=\n").unwrap();
        assert_eq!(env.len(), 3);
        assert_eq!(search_path(&env), b"/bin:/x");
        assert_eq!(search_path(&[]), DEFAULT_PATH.as_bytes());
        assert!(matches!(
            parse_env(b"NOEQUALS"),
            Err(ConfigError::BadEnv(1))
        ));
        assert!(matches!(parse_env(b"A=1\n=x"), Err(ConfigError::BadEnv(2))));
        assert!(parse_env(b"").unwrap().is_empty());
    }

    #[test]
    fn bounded_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmd");
        std::fs::write(&p, vec![b'a'; 100]).unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 100);
        assert!(matches!(
            read_bounded(&p, 99),
            Err(ConfigError::TooLarge { max: 99, .. })
        ));
        assert!(matches!(
            read_bounded(&dir.path().join("missing"), 1),
            Err(ConfigError::Read(..))
        ));
    }
}
