//! The image configuration (OCI / Docker `config.json`) and what the enclave's `cmd` and `env`
//! files are derived from it.
//!
//! `cmd` and `env` follow AWS's `nitro-cli build-enclave` exactly, so that an image built here
//! gets the same files (and so the same PCR2-relevant bytes) as with AWS's tool:
//! - if the config has both `Cmd` and `Env`, `cmd` is `Cmd`;
//! - otherwise `cmd` is `Entrypoint` (and `env` is `Env` or empty); with neither, the image is
//!   refused.
//!
//! Note that nitro-cli does not concatenate `Entrypoint` and `Cmd` as Docker does;
//! [`CommandStyle::Docker`] gives Docker's rule (`Entrypoint` followed by `Cmd`) for those who
//! want it. `WorkingDir` is not honoured by AWS's init (it chroots to `/rootfs` and runs the
//! command from `/`); to stay compatible no third file is added: the working directory is kept
//! in the image metadata (`DockerInfo.Config.WorkingDir`) only. `User` is likewise recorded but
//! not applied (the enclave command runs as root, as on AWS).

use serde::Deserialize;

/// Largest JSON document (config, manifest, index) read, in bytes.
pub const MAX_JSON_SIZE: u64 = 4 << 20;
/// Largest `cmd` or `env` file.
pub const MAX_CMD_ENV_SIZE: usize = 256 << 10;

/// Errors deriving the command and environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Neither a command nor an entrypoint.
    #[error(
        "the image has no command: it sets neither Cmd nor Entrypoint (give --cmd or --entrypoint)"
    )]
    NoCommand,
    /// An argument or variable has a newline, which the one-per-line files cannot carry.
    #[error("{what} {value:?} contains a newline, which the enclave's {what} file cannot carry")]
    Newline {
        /// "command argument" or "environment variable".
        what: &'static str,
        /// The value (cut).
        value: String,
    },
    /// An environment entry is not `KEY=value`.
    #[error("environment entry {0:?} is not of the form KEY=value")]
    BadEnv(String),
    /// The files would be too large.
    #[error("the command or environment is larger than {MAX_CMD_ENV_SIZE} bytes")]
    TooLarge,
}

/// The container part of an image config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ContainerConfig {
    /// `ENTRYPOINT`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `ENV`.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `WORKDIR` (recorded, not applied).
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// `USER` (recorded, not applied).
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

/// The fields of an image config that the builder uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture (`amd64`, `arm64`).
    #[serde(default)]
    pub architecture: Option<String>,
    /// Operating system.
    #[serde(default)]
    pub os: Option<String>,
    /// Creation time (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// Container settings.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// Layer digests of the uncompressed tars.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `rootfs` of a config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// Uncompressed layer digests.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Which rule turns Entrypoint and Cmd into argv.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommandStyle {
    /// AWS nitro-cli's rule (see the module docs). The default.
    #[default]
    NitroCli,
    /// Docker's rule: Entrypoint followed by Cmd.
    Docker,
}

/// Command-line overrides of the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOverrides {
    /// Replaces `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries added to (or replacing keys of) `Env`.
    pub env: Vec<String>,
}

/// The enclave's command and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEnv {
    /// argv.
    pub argv: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
}

impl CommandEnv {
    /// Derives argv and env from `config` with `overrides` applied.
    pub fn derive(
        config: &ContainerConfig,
        overrides: &CommandOverrides,
        style: CommandStyle,
    ) -> Result<Self, ConfigError> {
        let entrypoint = overrides
            .entrypoint
            .clone()
            .or_else(|| config.entrypoint.clone());
        // An explicit entrypoint override clears the image's Cmd, as `docker run --entrypoint`.
        let cmd = match (&overrides.cmd, &overrides.entrypoint) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(_)) => None,
            (None, None) => config.cmd.clone(),
        };
        let mut env = config.env.clone();
        if !overrides.env.is_empty() {
            let mut merged = env.take().unwrap_or_default();
            for e in &overrides.env {
                let key = e
                    .split_once('=')
                    .ok_or_else(|| ConfigError::BadEnv(e.clone()))?
                    .0;
                merged.retain(|old| old.split_once('=').map(|(k, _)| k) != Some(key));
                merged.push(e.clone());
            }
            env = Some(merged);
        }
        let argv = match style {
            CommandStyle::NitroCli => match (cmd, &env, entrypoint) {
                (Some(c), Some(_), _) => c,
                (_, _, Some(ep)) => ep,
                (Some(c), None, None) => c,
                (None, _, None) => return Err(ConfigError::NoCommand),
            },
            CommandStyle::Docker => {
                let mut v = entrypoint.unwrap_or_default();
                v.extend(cmd.unwrap_or_default());
                v
            }
        };
        if argv.is_empty() {
            return Err(ConfigError::NoCommand);
        }
        let env = env.unwrap_or_default();
        for a in &argv {
            if a.contains('\n') {
                return Err(ConfigError::Newline {
                    what: "command argument",
                    value: a.chars().take(100).collect(),
                });
            }
        }
        for e in &env {
            if e.contains('\n') {
                return Err(ConfigError::Newline {
                    what: "environment variable",
                    value: e.chars().take(100).collect(),
                });
            }
            if !e.contains('=') {
                return Err(ConfigError::BadEnv(e.chars().take(100).collect()));
            }
        }
        let me = Self { argv, env };
        if me.cmd_file().len() > MAX_CMD_ENV_SIZE || me.env_file().len() > MAX_CMD_ENV_SIZE {
            return Err(ConfigError::TooLarge);
        }
        Ok(me)
    }

    /// The `cmd` file: one argument per line, each followed by a newline (as nitro-cli writes).
    pub fn cmd_file(&self) -> Vec<u8> {
        lines(&self.argv)
    }

    /// The `env` file: one `KEY=value` per line.
    pub fn env_file(&self) -> Vec<u8> {
        lines(&self.env)
    }
}

fn lines(items: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(i.as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    fn cfg(
        ep: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        env: Option<Vec<String>>,
    ) -> ContainerConfig {
        ContainerConfig {
            entrypoint: ep,
            cmd,
            env,
            ..Default::default()
        }
    }

    #[test]
    fn nitro_cli_rule() {
        let none = CommandOverrides::default();
        let st = CommandStyle::NitroCli;
        // Cmd and Env: Cmd wins, Entrypoint ignored (as nitro-cli does).
        let c = cfg(v(&["/ep"]), v(&["/bin/sh", "-c", "run"]), v(&["PATH=/bin"]));
        let r = CommandEnv::derive(&c, &none, st).unwrap();
        assert_eq!(r.cmd_file(), b"/bin/sh\n-c\nrun\n");
        assert_eq!(r.env_file(), b"PATH=/bin\n");
        // No Env: Entrypoint.
        let c = cfg(v(&["/ep", "x"]), v(&["/cmd"]), None);
        assert_eq!(
            CommandEnv::derive(&c, &none, st).unwrap().argv,
            ["/ep", "x"]
        );
        // Nothing: refused.
        assert_eq!(
            CommandEnv::derive(&cfg(None, None, v(&["A=1"])), &none, st),
            Err(ConfigError::NoCommand)
        );
    }

    #[test]
    fn docker_rule_and_overrides() {
        let c = cfg(v(&["/ep"]), v(&["arg"]), v(&["A=1", "B=2"]));
        let r = CommandEnv::derive(&c, &CommandOverrides::default(), CommandStyle::Docker).unwrap();
        assert_eq!(r.argv, ["/ep", "arg"]);
        let o = CommandOverrides {
            entrypoint: v(&["/other"]),
            cmd: None,
            env: vec!["B=3".into(), "C=4".into()],
        };
        let r = CommandEnv::derive(&c, &o, CommandStyle::Docker).unwrap();
        assert_eq!(r.argv, ["/other"]);
        assert_eq!(r.env, ["A=1", "B=3", "C=4"]);
    }

    #[test]
    fn rejects_newlines_and_bad_env() {
        let none = CommandOverrides::default();
        let c = cfg(None, v(&["a\nb"]), v(&[]));
        assert!(matches!(
            CommandEnv::derive(&c, &none, CommandStyle::NitroCli),
            Err(ConfigError::Newline { .. })
        ));
        let c = cfg(None, v(&["a"]), v(&["NOEQUALS"]));
        assert!(matches!(
            CommandEnv::derive(&c, &none, CommandStyle::NitroCli),
            Err(ConfigError::BadEnv(_))
        ));
        let c = cfg(None, v(&[]), v(&[]));
        assert_eq!(
            CommandEnv::derive(&c, &none, CommandStyle::NitroCli),
            Err(ConfigError::NoCommand)
        );
    }
}
